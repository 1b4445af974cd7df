"""The model's towers and cross-modal encoder run in batches with static shapes: what the inference pipeline and the
retrieval evaluation share.

Each uni-modal tower runs once per image or text and keeps only the states the cross-modal encoder reads (the top
`num_bridges + 1`); the cross-modal encoder then runs once per pair. On HPU every batch is padded to `batch_size`
(a new shape means a new graph) and, in lazy mode, every module runs as an HPU graph.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..modeling import BridgeTowerForContrastiveLearning
from ..modeling.modeling_bridgetower import TowerOutput

logger = logging.getLogger(__name__)


class TextTower(nn.Module):
    """input_ids, attention_mask -> the top `top_layers` text states, as a tuple (what an HPU graph returns)."""

    def __init__(self, model, top_layers: int):
        super().__init__()
        self.model, self.top_layers = model, top_layers

    def forward(self, input_ids, attention_mask):
        text = self.model.bridgetower.encode_text(input_ids, attention_mask)
        return tuple(text.hidden_states[-self.top_layers :])


class ImageTower(nn.Module):
    """pixel_values -> the top `top_layers` vision states. Images fill the square, so no pixel mask."""

    def __init__(self, model, top_layers: int):
        super().__init__()
        self.model, self.top_layers = model, top_layers

    def forward(self, pixel_values):
        image = self.model.bridgetower.encode_image(pixel_values)
        return tuple(image.hidden_states[-self.top_layers :])


def _fuse(model, top_layers: int, text_mask, states, pooled_only: bool = False):
    """The cross-modal encoder over paired states: `top_layers` text states, then as many image states."""
    text = TowerOutput(tuple(states[:top_layers]), text_mask)
    return model.bridgetower.fuse(text, TowerOutput(tuple(states[top_layers:]), None), pooled_only=pooled_only)


class PairFusion(nn.Module):
    """Paired text and image states -> (ITM or VQA logits, MLM logits), whichever heads the checkpoint has (the
    pooled output / text features where it has none)."""

    def __init__(self, model, top_layers: int):
        super().__init__()
        self.model, self.top_layers = model, top_layers

    def forward(self, attention_mask, *states):
        fused = _fuse(self.model, self.top_layers, attention_mask, states)
        pooled_head = getattr(self.model, "itm_score", None) or getattr(self.model, "vqa_classifier", None)
        pooled = pooled_head(fused.pooler_output) if pooled_head is not None else fused.pooler_output
        mlm = self.model.mlm_score(fused.text_features) if hasattr(self.model, "mlm_score") else fused.text_features
        return pooled, mlm


class PairScorer(nn.Module):
    """Rows of all the texts' and images' states, paired -> the ITM logit of "match". The rows are picked inside, so
    the states stay where they are and the module's inputs keep one shape per batch size."""

    def __init__(self, model, top_layers: int):
        super().__init__()
        self.model, self.top_layers = model, top_layers

    def forward(self, text_rows, image_rows, text_mask, *states):
        rows = [text_rows] * self.top_layers + [image_rows] * self.top_layers
        picked = [s.index_select(0, r) for s, r in zip(states, rows, strict=True)]
        fused = _fuse(self.model, self.top_layers, text_mask.index_select(0, text_rows), picked, pooled_only=True)
        return (self.model.itm_score(fused.pooler_output)[:, 1],)


def has_itc_heads(model) -> bool:
    """Whether `model` has ITC heads to rank by (ForPreTraining with the "itc" objective, ForContrastiveLearning)."""
    return hasattr(model, "itc_text_head")


def pad_rows(tensors: Sequence[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Each tensor padded to `size` rows by repeating its last row."""
    count = tensors[0].shape[0]
    if count == size:
        return list(tensors)
    return [torch.cat([t, t[-1:].expand(size - count, *t.shape[1:])]) for t in tensors]


def to_cpu_float(outputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(o.float().cpu() for o in outputs)


class TowerRunner:
    """The towers and the cross-modal encoder of `model`, run in batches of `batch_size` rows on the model's device.

    `runner(module, *tensors)` runs one of `text_tower`, `image_tower`, `fusion` (or a module from `graph`) over
    the rows of `tensors` and returns its outputs concatenated, float32, on the CPU; `runner.run` takes any batches
    and keeps what `keep` makes of each (retrieval keeps the states on the device)."""

    def __init__(self, model, batch_size: int, bf16: bool = False):
        self.model, self.batch_size, self.bf16 = model, batch_size, bf16
        self.device = next(model.parameters()).device
        self.top_layers = model.config.num_bridges + 1
        self.static_shapes = self.device.type == "hpu"  # pad every batch to batch_size
        self.hpu_graphs = self.device.type == "hpu" and os.environ.get("PT_HPU_LAZY_MODE") == "1"
        if self.device.type == "hpu" and not self.hpu_graphs:
            # Lazy mode is fixed when torch is imported (Synapse 1.24 defaults to eager): too late to choose here.
            logger.warning("HPU in eager mode: running without HPU graphs; start with PT_HPU_LAZY_MODE=1 for them.")
        self.text_tower = self.graph(TextTower(model, self.top_layers))
        self.image_tower = self.graph(ImageTower(model, self.top_layers))
        self.fusion = self.graph(PairFusion(model, self.top_layers))
        self.has_itc = has_itc_heads(model)

    def graph(self, module: nn.Module) -> nn.Module:
        """`module` replayed as an HPU graph on HPU in lazy mode; elsewhere itself."""
        if not self.hpu_graphs:
            return module
        from ..device.gaudi import wrap_in_hpu_graph  # HPU only: imports habana_frameworks

        return wrap_in_hpu_graph(module)

    def autocast(self):
        """bfloat16 autocast on the model's device when asked for, else nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def batches(self, *tensors: torch.Tensor) -> Iterator[list[torch.Tensor]]:
        """The rows of `tensors`, `batch_size` at a time."""
        for start in range(0, tensors[0].shape[0], self.batch_size):
            yield [t[start : start + self.batch_size] for t in tensors]

    def num_batches(self, rows: int) -> int:
        return -(-rows // self.batch_size)

    def run(self, module, batches: Iterable[Sequence[torch.Tensor]], *constants, keep: Callable = to_cpu_float):
        """[keep(outputs) for each batch]: `module(*batch, *constants)` with the batch moved to the device (and padded
        on HPU), its outputs cut back to the batch's rows. `constants` are passed as they are."""
        kept = []
        with torch.inference_mode(), self.autocast():
            for batch in batches:
                count = batch[0].shape[0]
                if self.static_shapes:
                    batch = pad_rows(batch, self.batch_size)
                outputs = module(*(t.to(self.device) for t in batch), *constants)
                kept.append(keep(tuple(o[:count] for o in outputs)))
        return kept

    def __call__(self, module, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`module` over the rows of `tensors`: its outputs concatenated, float32, on the CPU."""
        parts = self.run(module, self.batches(*tensors))
        return tuple(torch.cat(outputs) for outputs in zip(*parts, strict=True))

    def fuse(self, text_states, text_mask, image_states, text_rows, image_rows) -> tuple[torch.Tensor, torch.Tensor]:
        """`fusion`'s (pooled-head logits, MLM logits) of the pairs (text_rows[i], image_rows[i]) of CPU states."""
        text_rows, image_rows = torch.as_tensor(text_rows), torch.as_tensor(image_rows)
        states = [s.index_select(0, text_rows) for s in text_states]
        states += [s.index_select(0, image_rows) for s in image_states]
        return self(self.fusion, text_mask.index_select(0, text_rows), *states)

    def itc_text(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """Normalised ITC embeddings of text states (the top ones at least), by the checkpoint's own ITC heads."""
        text = TowerOutput(tuple(s.to(self.device) for s in states), None)
        if isinstance(self.model, BridgeTowerForContrastiveLearning):
            return self.model.text_embeddings(text)
        return self.model.itc_text_embeddings(text)

    def itc_image(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """Normalised ITC embeddings of vision states: projected into the cross-modal space by a contrastive
        checkpoint, after the final LayerNorm (`ln_post`) by a pre-training one, each as it was trained."""
        image = TowerOutput(tuple(s.to(self.device) for s in states), None)
        if isinstance(self.model, BridgeTowerForContrastiveLearning):
            return self.model.image_embeddings(image)
        return self.model.itc_image_embeddings(image)
