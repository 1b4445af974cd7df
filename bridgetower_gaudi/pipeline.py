"""Inference on a trained BridgeTower checkpoint: image-caption scores, masked words, folder search, answers.

    pipe = BridgeTowerPipeline.from_pretrained("outputs/pretrain-tiny-synthetic", device="auto", bf16=False)
    pipe.score("cat.png", ["a cat on a couch", "a dog"])        # ITM match probability (+ ITC similarity)
    pipe.fill_mask("cat.png", "a [MASK] on a couch", top=5)    # top tokens for each masked position
    pipe.search("photos/", "a cat on a couch", top=5)          # rank a folder of images by a sentence
    pipe.search_captions("cat.png", captions, top=5)           # rank captions for an image
    pipe.vqa("cat.png", "what is on the couch?", top=5)         # answers (a VQA checkpoint: run_finetune --task vqa)

Every method is batched: towers run once per image and once per text, the cross-modal encoder once per pair, in
batches of `batch_size`. Retrieval mirrors the official recipe when the checkpoint has ITC heads (rank everything by
ITC similarity, re-rank the best `rerank` by ITM); without them every candidate is ranked by ITM directly, which is
fine for small folders.

Shapes are static: captions are padded to one length, and on HPU the last batch is padded to `batch_size` and the
towers and the cross-modal encoder run as HPU graphs (lazy mode), so nothing recompiles between calls.

`search` caches the image towers' output on disk in `<image_dir>/.bridgetower_cache/<checkpoint key>/` (or
`cache_dir`), keyed by the checkpoint's weights (size, mtime), image size, transform and precision, and per image by
(path, size, mtime): a second query over the same folder skips the image tower, changed or added files are
re-embedded, removed ones dropped. Nothing else is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer
from transformers.utils import is_torch_hpu_available

from .data.images import ImageTransform, decode_image, evaluation_transform
from .data.records import BadRecord
from .modeling import (
    BridgeTowerConfig,
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerForPreTraining,
    BridgeTowerForVisualQuestionAnswering,
)
from .modeling.modeling_bridgetower import TowerOutput

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CACHE_DIR_NAME = ".bridgetower_cache"
MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (
        BridgeTowerForPreTraining,
        BridgeTowerForMaskedLM,
        BridgeTowerForImageAndTextRetrieval,
        BridgeTowerForContrastiveLearning,
        BridgeTowerForVisualQuestionAnswering,
    )
}
# The spellings of a masked word people type; each becomes the checkpoint tokenizer's own mask token.
MASK_SPELLINGS = ("<mask>", "[MASK]")


class PipelineError(ValueError):
    """Bad input or an unusable checkpoint; the message says what to do."""


def resolve_device(device: str = "auto") -> str:
    """'auto' -> hpu, cuda or cpu, whichever is present; an explicit device that is missing is an error."""
    if device == "auto":
        return "hpu" if is_torch_hpu_available() else "cuda" if torch.cuda.is_available() else "cpu"
    if device == "hpu" and not is_torch_hpu_available():
        raise PipelineError("--device hpu: no Gaudi (HPU) found here; use --device auto, cuda or cpu.")
    if device == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device cuda: no CUDA GPU found here; use --device auto or cpu.")
    if device not in ("hpu", "cuda", "cpu"):
        raise PipelineError(f"device {device!r}: choose auto, hpu, cuda or cpu.")
    return device


def load_model(model_dir: str, device: str):
    """(model, config) of a BridgeTower checkpoint folder, or a PipelineError that says what is wrong with it."""
    if not os.path.isdir(model_dir):
        raise PipelineError(
            f"no checkpoint folder at {model_dir!r}: pass --model with a folder written by run_pretrain.py "
            "(e.g. outputs/pretrain-tiny-synthetic after `python run_scripts/run_pretrain.py`)."
        )
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise PipelineError(
            f"{model_dir!r} has no config.json: it is not a saved checkpoint (save_pretrained writes one)."
        )
    with open(os.path.join(model_dir, "config.json")) as f:
        raw = json.load(f)
    if raw.get("model_type") != "bridgetower":
        raise PipelineError(
            f"{model_dir!r} holds a {raw.get('model_type')!r} model, not BridgeTower: pass a BridgeTower checkpoint."
        )
    architectures = [name for name in raw.get("architectures") or [] if name in MODEL_CLASSES]
    if not architectures:
        raise PipelineError(
            f"{model_dir!r}: architectures {raw.get('architectures')} has no BridgeTower class with a head "
            f"({', '.join(MODEL_CLASSES)}); save the model with its head (e.g. a run_pretrain.py output)."
        )
    config = BridgeTowerConfig.from_pretrained(model_dir)
    # SDPA on CPU / CUDA / HPU; HPU graphs capture it like any other op.
    model = MODEL_CLASSES[architectures[0]].from_pretrained(model_dir, config=config, attn_implementation="sdpa")
    return model.eval().to(device), config


def checkpoint_key(model_dir: str, image_size: int, transform: str, dtype: str) -> str:
    """What the cached image states depend on: the weights files (size, mtime), the image pipeline, the precision."""
    parts = [str(image_size), transform, dtype]
    for name in sorted(os.listdir(model_dir)):
        if name.endswith((".safetensors", ".bin", ".json")) and not name.startswith(("trainer_", "training_")):
            stat = os.stat(os.path.join(model_dir, name))
            parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def list_images(image_dir: str) -> list[str]:
    """Image files under `image_dir`, recursively, sorted, paths relative to it (the cache directory left out)."""
    found = []
    for root, dirs, files in os.walk(image_dir):
        dirs[:] = sorted(d for d in dirs if d != CACHE_DIR_NAME)
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(root, name), image_dir))
    return found


class _TextTower(nn.Module):
    """input_ids -> the text states the cross-modal layers read (the top num_bridges + 1), as a tuple of tensors
    (what an HPU graph returns)."""

    def __init__(self, model, top_layers: int):
        super().__init__()
        self.model, self.top_layers = model, top_layers

    def forward(self, input_ids, attention_mask):
        text = self.model.bridgetower.encode_text(input_ids, attention_mask)
        return tuple(text.hidden_states[-self.top_layers :])


class _ImageTower(nn.Module):
    """pixel_values -> the top num_bridges + 1 vision states. Images fill the square, so no pixel mask."""

    def __init__(self, model, top_layers: int):
        super().__init__()
        self.model, self.top_layers = model, top_layers

    def forward(self, pixel_values):
        image = self.model.bridgetower.encode_image(pixel_values)
        return tuple(image.hidden_states[-self.top_layers :])


class _Fusion(nn.Module):
    """Paired text and image states -> (ITM or VQA logits, MLM logits), whichever heads the checkpoint has."""

    def __init__(self, model, top_layers: int):
        super().__init__()
        self.model, self.top_layers = model, top_layers

    def forward(self, attention_mask, *states):
        text = TowerOutput(states[: self.top_layers], attention_mask)
        image = TowerOutput(states[self.top_layers :], None)
        fused = self.model.bridgetower.fuse(text, image)
        pooled_head = getattr(self.model, "itm_score", None) or getattr(self.model, "vqa_classifier", None)
        pooled = pooled_head(fused.pooler_output) if pooled_head is not None else fused.pooler_output
        mlm = self.model.mlm_score(fused.text_features) if hasattr(self.model, "mlm_score") else fused.text_features
        return pooled, mlm


@dataclass
class SearchResult:
    """Ranked matches (best first), the files that could not be read, and how the ranking was made."""

    matches: list[dict]
    ranked_by: str
    skipped: list[dict] = field(default_factory=list)
    embedded: int = 0  # images run through the image tower for this query
    cached: int = 0  # images whose states came from the cache

    def to_dict(self) -> dict:
        return {
            "matches": self.matches,
            "ranked_by": self.ranked_by,
            "skipped": self.skipped,
            "embedded": self.embedded,
            "cached": self.cached,
        }


class BridgeTowerPipeline:
    def __init__(
        self,
        model,
        config: BridgeTowerConfig,
        tokenizer,
        model_dir: str,
        device: str = "cpu",
        bf16: bool = False,
        batch_size: int = 32,
        max_length: int | None = None,
        rerank: int = 16,
    ):
        self.model, self.config, self.tokenizer, self.model_dir = model, config, tokenizer, model_dir
        self.device, self.bf16, self.batch_size, self.rerank = device, bf16, batch_size, rerank
        self.image_size = config.vision_config.image_size
        # The evaluation transform of what the checkpoint trained with (run.py records it): clip after pre-training,
        # blip (squash) after the fine-tuning transforms.
        self.transform = ImageTransform(
            self.image_size, evaluation_transform(getattr(config, "image_transform", "clip"))
        )
        self.top_layers = config.num_bridges + 1
        # RoBERTa numbers positions from padding_idx + 1: two positions fewer than the table holds.
        self.position_limit = config.text_config.max_position_embeddings - 2
        if max_length is not None and max_length > self.position_limit:
            raise PipelineError(
                f"--max-length {max_length}: the model has {self.position_limit} text positions; use at most that."
            )
        self.max_length = max_length or min(tokenizer.model_max_length, self.position_limit)
        self.has_itm = hasattr(model, "itm_score")
        self.has_mlm = hasattr(model, "mlm_score")
        self.has_itc = hasattr(model, "itc_text_head")
        self.has_vqa = hasattr(model, "vqa_classifier")
        self.text_tower = _TextTower(model, self.top_layers)
        self.image_tower = _ImageTower(model, self.top_layers)
        self.fusion = _Fusion(model, self.top_layers)
        if device == "hpu" and os.environ.get("PT_HPU_LAZY_MODE") != "1":
            # Lazy mode is fixed when torch is imported (Synapse 1.24 defaults to eager): too late to choose here.
            logger.warning("HPU in eager mode: running without HPU graphs; start with PT_HPU_LAZY_MODE=1 for them.")
        elif device == "hpu":
            from .device.gaudi import wrap_in_hpu_graph  # HPU only: imports habana_frameworks

            self.text_tower = wrap_in_hpu_graph(self.text_tower)
            self.image_tower = wrap_in_hpu_graph(self.image_tower)
            self.fusion = wrap_in_hpu_graph(self.fusion)
        self.image_tower_calls = 0  # images sent through the image tower (tests and --verbose read it)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str,
        device: str = "auto",
        bf16: bool = False,
        batch_size: int = 32,
        max_length: int | None = None,
        rerank: int = 16,
    ) -> BridgeTowerPipeline:
        device = resolve_device(device)
        model, config = load_model(model_dir, device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except (OSError, ValueError) as error:
            raise PipelineError(
                f"{model_dir!r} has no tokenizer ({error}); save one beside the weights "
                "(tokenizer.save_pretrained(DIR); run_pretrain.py does)."
            ) from None
        return cls(model, config, tokenizer, model_dir, device, bf16, batch_size, max_length, rerank)

    # --- batching ---------------------------------------------------------------------------------------------
    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=torch.bfloat16)

    def _run(self, module, *tensors):
        """`module` over the rows of `tensors` in batches of `batch_size` (the last padded to it on HPU, where a new
        shape means a new graph); outputs concatenated, float32, on the CPU."""
        rows = tensors[0].shape[0]
        outputs = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, rows, self.batch_size):
                batch = [t[start : start + self.batch_size] for t in tensors]
                count = batch[0].shape[0]
                if self.device == "hpu" and count < self.batch_size:
                    batch = [torch.cat([t, t[-1:].expand(self.batch_size - count, *t.shape[1:])]) for t in batch]
                out = module(*(t.to(self.device) for t in batch))
                outputs.append(tuple(o[:count].float().cpu() for o in out))
        return tuple(torch.cat(parts) for parts in zip(*outputs, strict=True))

    def _tokenize(self, texts: list[str]) -> dict:
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]
        for text, length in zip(texts, lengths, strict=True):
            if length > self.max_length:
                fix = (
                    f"pass --max-length up to {self.position_limit}"
                    if self.max_length < self.position_limit
                    else "shorten it"
                )
                raise PipelineError(
                    f"caption {text!r} has {length} tokens; this model reads at most {self.max_length}: {fix}."
                )
        return self.tokenizer(
            texts, padding="max_length", max_length=self.max_length, truncation=False, return_tensors="pt"
        )

    def _pixels(self, images) -> torch.Tensor:
        decoded = []
        for image in images:
            name = image if isinstance(image, (str, os.PathLike)) else "image"
            try:
                decoded.append(self.transform(decode_image(image, str(name), self.transform.draft_size)))
            except BadRecord as error:
                raise PipelineError(f"cannot read image {name!s}: {error}") from None
        return torch.stack(decoded)

    def encode_texts(self, texts: list[str]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        encoding = self._tokenize(texts)
        mask = encoding["attention_mask"]
        return self._run(self.text_tower, encoding["input_ids"], mask), mask

    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.image_tower_calls += pixel_values.shape[0]
        return self._run(self.image_tower, pixel_values)

    def _fuse(self, text_states, text_mask, image_states, text_rows, image_rows):
        """(ITM logits, MLM logits) of the pairs (text_rows[i], image_rows[i])."""
        text_rows, image_rows = torch.as_tensor(text_rows), torch.as_tensor(image_rows)
        states = [s.index_select(0, text_rows) for s in text_states] + [
            s.index_select(0, image_rows) for s in image_states
        ]
        return self._run(self.fusion, text_mask.index_select(0, text_rows), *states)

    def _itm(self, text_states, text_mask, image_states, text_rows, image_rows) -> torch.Tensor:
        self._require("itm", "image-text matching (ITM)")
        itm_logits, _ = self._fuse(text_states, text_mask, image_states, text_rows, image_rows)
        return itm_logits.softmax(dim=-1)[:, 1]

    def _itc_similarity(self, text_states, image_states) -> torch.Tensor:
        """(texts x images) cosine similarity of the ITC embeddings (the same heads the checkpoint trained)."""
        model = self.model
        with torch.inference_mode():
            last_text = TowerOutput(tuple(s.to(self.device) for s in text_states), None)
            last_image = TowerOutput(tuple(s.to(self.device) for s in image_states), None)
            if isinstance(model, BridgeTowerForContrastiveLearning):
                text, image = model.text_embeddings(last_text), model.image_embeddings(last_image)
            else:  # ForPreTraining with "itc": the vision [CLS] after ln_post, as its ITC loss
                layer = self.config.num_vision_layers
                image_cls = model.bridgetower._vision_layernorm(last_image.hidden_states[-1][:, 0], layer)
                text = F.normalize(model.itc_text_head(last_text.hidden_states[-1][:, 0]), dim=-1)
                image = F.normalize(model.itc_image_head(image_cls), dim=-1)
            return (text @ image.t()).float().cpu()

    def _require(self, head: str, what: str) -> None:
        if not getattr(self, f"has_{head}"):
            objectives = "mlm,itm,itc" if head == "itc" else "mlm,itm"
            raise PipelineError(
                f"{self.model_dir!r} ({type(self.model).__name__}) has no {head.upper()} head, which {what} needs: "
                f"use a checkpoint trained with it (run_pretrain.py --objectives {objectives})."
            )

    def _require_itm_or_itc(self, what: str) -> None:
        if not (self.has_itm or self.has_itc):
            raise PipelineError(
                f"{self.model_dir!r} ({type(self.model).__name__}) has neither an ITM nor an ITC head, which {what} "
                "needs: use a checkpoint trained with them (run_pretrain.py --objectives mlm,itm or mlm,itm,itc)."
            )

    # --- public methods ---------------------------------------------------------------------------------------
    def score(self, images, texts):
        """ITM match probability (and ITC cosine similarity when the checkpoint has ITC heads) of every text with
        every image. One image -> a list of {"text", "itm"[, "itc"]} per text; a list of images -> a list of those."""
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        texts = [texts] if isinstance(texts, str) else list(texts)
        self._require_itm_or_itc("scoring")
        text_states, text_mask = self.encode_texts(texts)
        image_states = self.encode_images(self._pixels(images))
        text_rows = [t for _ in images for t in range(len(texts))]
        image_rows = [i for i in range(len(images)) for _ in texts]
        itm = itc = None
        if self.has_itm:
            itm = self._itm(text_states, text_mask, image_states, text_rows, image_rows).view(len(images), len(texts))
        if self.has_itc:
            itc = self._itc_similarity(text_states, image_states).t()
        results = []
        for i in range(len(images)):
            row = []
            for t, text in enumerate(texts):
                entry = {"text": text}
                if itm is not None:
                    entry["itm"] = float(itm[i, t])
                if itc is not None:
                    entry["itc"] = float(itc[i, t])
                row.append(entry)
            results.append(row)
        return results[0] if single else results

    def vqa(self, images, questions, top: int = 5):
        """The `top` answers to each question about its image, with probabilities (sigmoid of the VQA logits: the
        head is trained with binary cross-entropy). One image and question -> a list of {"answer", "score"}; lists
        of images and questions (same length) -> a list of those."""
        single = isinstance(questions, str)
        images = [images] if single else list(images)
        questions = [questions] if single else list(questions)
        if not self.has_vqa:
            raise PipelineError(
                f"{self.model_dir!r} ({type(self.model).__name__}) has no VQA head: fine-tune one with "
                "run_scripts/run_finetune.py --task vqa, and pass its output folder."
            )
        if len(images) != len(questions):
            raise PipelineError(f"{len(images)} images for {len(questions)} questions: give one image per question.")
        text_states, text_mask = self.encode_texts(questions)
        image_states = self.encode_images(self._pixels(images))
        rows = list(range(len(questions)))
        logits, _ = self._fuse(text_states, text_mask, image_states, rows, rows)
        probabilities = logits.sigmoid()
        labels = self.config.id2label
        results = []
        for row in range(len(questions)):
            values, indices = probabilities[row].topk(min(top, probabilities.shape[1]))
            results.append(
                [{"answer": labels[int(i)], "score": float(v)} for v, i in zip(values, indices, strict=True)]
            )
        return results[0] if single else results

    def fill_mask(self, images, texts, top: int = 5):
        """The `top` tokens (with probabilities) for each masked word (`[MASK]` or `<mask>`) of each text, read with
        its image. One (image, text) -> a list per masked position of [{"token", "score", "sequence"}]; lists of
        images and texts (same length) -> a list of those."""
        single = isinstance(texts, str)
        images = [images] if single else list(images)
        texts = [texts] if single else list(texts)
        if len(images) != len(texts):
            raise PipelineError(f"fill_mask: {len(images)} images for {len(texts)} texts; pass one image per text.")
        self._require("mlm", "filling masked words")
        mask_token = self.tokenizer.mask_token
        texts = [self._with_mask_token(text, mask_token) for text in texts]
        text_states, text_mask = self.encode_texts(texts)
        image_states = self.encode_images(self._pixels(images))
        rows = list(range(len(texts)))
        _, mlm_logits = self._fuse(text_states, text_mask, image_states, rows, rows)
        input_ids = self._tokenize(texts)["input_ids"]
        results = []
        for row, text in enumerate(texts):
            positions = (input_ids[row] == self.tokenizer.mask_token_id).nonzero().flatten().tolist()
            per_mask = []
            for position in positions:
                probs = mlm_logits[row, position].softmax(dim=-1)
                scores, ids = probs.topk(min(top, probs.shape[-1]))
                per_mask.append(
                    [
                        {"token": token, "score": float(score), "sequence": text.replace(mask_token, token, 1)}
                        for score, token in zip(scores, (self._token_text(i) for i in ids.tolist()), strict=True)
                    ]
                )
            results.append(per_mask)
        return results[0] if single else results

    def _with_mask_token(self, text: str, mask_token: str) -> str:
        for spelling in MASK_SPELLINGS:
            text = text.replace(spelling, mask_token)
        if mask_token not in text:
            raise PipelineError(f"no masked word in {text!r}: write {mask_token} (or <mask>) where the word goes.")
        return text

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id]).strip()

    def _rank(self, text_states, text_mask, image_states, candidates: int, text_side: bool, top: int):
        """(order, itm, itc): candidate indices best first, with their ITM probabilities and ITC similarities.
        With ITC heads: ITC over all, ITM over the best `rerank`; else ITM over all; ITC alone without ITM (itm
        then None)."""
        if self.has_itc:
            similarity = self._itc_similarity(text_states, image_states)  # texts x images
            itc = similarity[:, 0] if text_side else similarity[0]
            shortlist = itc.argsort(descending=True)[: max(top, self.rerank)].tolist()
        else:
            itc, shortlist = None, list(range(candidates))
        if not self.has_itm:  # a contrastive-only checkpoint: ITC alone
            return shortlist[:top], None, itc
        if text_side:  # candidates are texts, one image
            itm = self._itm(text_states, text_mask, image_states, shortlist, [0] * len(shortlist))
        else:
            itm = self._itm(text_states, text_mask, image_states, [0] * len(shortlist), shortlist)
        order = itm.argsort(descending=True)[:top].tolist()
        return [shortlist[i] for i in order], [float(itm[i]) for i in order], itc

    def search_captions(self, image, captions: list[str], top: int = 5) -> SearchResult:
        """The captions that best describe `image`, best first."""
        self._require_itm_or_itc("search")
        text_states, text_mask = self.encode_texts(list(captions))
        image_states = self.encode_images(self._pixels([image]))
        order, itm, itc = self._rank(text_states, text_mask, image_states, len(captions), text_side=True, top=top)
        matches = [self._match("caption", captions[c], c, itm, itc, rank) for rank, c in enumerate(order)]
        return SearchResult(matches, self._ranked_by(len(captions)))

    def search(self, image_dir: str, query: str, top: int = 5, cache_dir: str | None = None, progress: bool = True):
        """The images under `image_dir` (recursively) that best match `query`, best first; unreadable files are
        skipped and listed in `skipped`. Image states are cached (see the module docstring)."""
        self._require_itm_or_itc("search")
        if not os.path.isdir(image_dir):
            raise PipelineError(f"no folder at {image_dir!r}: pass a folder of images to search.")
        text_states, text_mask = self.encode_texts([query])  # a too-long query fails before the folder is read
        paths, image_states, skipped, embedded = self._folder_states(image_dir, cache_dir, progress)
        if not paths:
            return SearchResult([], self._ranked_by(0), skipped, embedded, 0)
        order, itm, itc = self._rank(text_states, text_mask, image_states, len(paths), text_side=False, top=top)
        matches = [self._match("path", paths[i], i, itm, itc, rank) for rank, i in enumerate(order)]
        return SearchResult(matches, self._ranked_by(len(paths)), skipped, embedded, len(paths) - embedded)

    @staticmethod
    def _match(key: str, value, index: int, itm, itc, rank: int) -> dict:
        match = {key: value}
        if itm is not None:
            match["itm"] = itm[rank]
        if itc is not None:
            match["itc"] = float(itc[index])
        return match

    def _ranked_by(self, candidates: int) -> str:
        if not self.has_itm:
            return f"ITC similarity over all {candidates} (no ITM head in this checkpoint)"
        if self.has_itc:
            return f"ITC similarity, best {min(candidates, self.rerank)} re-ranked by ITM"
        return f"ITM over all {candidates} (no ITC head in this checkpoint)"

    # --- the image-state cache --------------------------------------------------------------------------------
    def cache_path(self, image_dir: str, cache_dir: str | None = None) -> str:
        dtype = "bf16" if self.bf16 else "fp32"
        # "+draft": JPEGs decoded in draft mode (decode_image); caches of full decodes are not mixed in.
        key = checkpoint_key(self.model_dir, self.image_size, f"{self.transform.mode}+draft", dtype)
        return os.path.join(cache_dir or os.path.join(image_dir, CACHE_DIR_NAME), key)

    def _folder_states(self, image_dir: str, cache_dir: str | None, progress: bool):
        """(paths, states, skipped, embedded): the readable images' states, from the cache where the file is
        unchanged, through the image tower otherwise; the cache rewritten when anything changed."""
        where = self.cache_path(image_dir, cache_dir)
        index_file, states_file = os.path.join(where, "index.json"), os.path.join(where, "states.safetensors")
        cached_index, cached_states = {}, None
        if os.path.isfile(index_file) and os.path.isfile(states_file):
            with open(index_file) as f:
                cached_index = json.load(f)
            cached_states = load_file(states_file)
        files = list_images(image_dir)
        stamps = {}
        for path in files:
            stat = os.stat(os.path.join(image_dir, path))
            stamps[path] = [stat.st_size, stat.st_mtime_ns]
        keep = [
            p for p in files if p in cached_index.get("files", {}) and cached_index["files"][p]["stamp"] == stamps[p]
        ]
        skipped = [s for s in cached_index.get("skipped", []) if stamps.get(s["path"]) == s["stamp"]]
        known_bad = {s["path"] for s in skipped}
        todo = [p for p in files if p not in keep and p not in known_bad]

        new_paths, new_states = [], []
        bar = tqdm(total=len(todo), desc="embedding images", unit="img", disable=not progress or not todo)
        for start in range(0, len(todo), self.batch_size):
            pixels, names = [], []
            for path in todo[start : start + self.batch_size]:
                try:
                    pixels.append(
                        self.transform(decode_image(os.path.join(image_dir, path), path, self.transform.draft_size))
                    )
                    names.append(path)
                except BadRecord as error:
                    skipped.append({"path": path, "reason": error.reason, "stamp": stamps[path]})
            if pixels:
                new_states.append(self.encode_images(torch.stack(pixels)))
                new_paths += names
            bar.update(len(todo[start : start + self.batch_size]))
        bar.close()

        parts = []
        if keep:
            rows = torch.tensor([cached_index["files"][p]["row"] for p in keep])
            parts.append(tuple(cached_states[f"layer{k}"].index_select(0, rows) for k in range(self.top_layers)))
        parts += new_states
        paths = keep + new_paths
        if not parts:
            states = ()
        else:
            states = tuple(torch.cat([part[k] for part in parts]) for k in range(self.top_layers))
        changed = bool(todo) or len(keep) != len(cached_index.get("files", {}))
        if changed:
            os.makedirs(where, exist_ok=True)
            index = {
                "files": {p: {"row": row, "stamp": stamps[p]} for row, p in enumerate(paths)},
                "skipped": skipped,
            }
            if states:
                save_file({f"layer{k}": s.contiguous() for k, s in enumerate(states)}, states_file)
            with open(index_file, "w") as f:
                json.dump(index, f)
        skipped = [{"path": s["path"], "reason": s["reason"]} for s in skipped]
        return paths, states, skipped, len(new_paths)
