"""Gaudi (HPU) path: GaudiTrainer, GaudiTrainingArguments and GaudiConfig from optimum-habana 1.21.2. The only module
that imports optimum.habana / habana_frameworks. Written from optimum-habana's source and Intel's Gaudi docs;
contract-tested on CPU (`use_habana=False, use_cpu=True`), not yet run on Gaudi hardware."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from optimum.habana import GaudiConfig, GaudiTrainer, GaudiTrainingArguments
from transformers import Trainer
from transformers.modeling_utils import ModuleUtilsMixin, PreTrainedModel
from transformers.models.bert import modeling_bert
from transformers.models.clip import modeling_clip

from . import DEFAULT_GAUDI_CONFIG, GAUDI_ATTENTION
from .attention import register_tower_attention
from .flags import ExampleScriptArguments


@dataclass
class BridgeTowerGaudiTrainingArguments(GaudiTrainingArguments, ExampleScriptArguments):
    """GaudiTrainingArguments (Gaudi's own defaults) plus the run_bridgetower.py flags it lacks."""


# What adapt_transformers_to_gaudi() (run by GaudiTrainingArguments on HPU) replaces in the transformers code our towers
# are built from. Its CLIP classes ignore attn_implementation, pass scale=1 to FusedSDPA although 4.55 no longer
# pre-scales queries, and fail with a 4-D padding mask; its BERT SDPA forward drops attention dropout in training; its
# mask helpers (get_extended_attention_mask, invert_attention_mask) compute the masks outside autocast; its
# _check_and_enable_sdpa puts RoBERTa on eager attention. The towers stay transformers' own and get the fused kernel
# through the attention registry instead (--use_flash_attention). Its security patches (PretrainedConfig.__init__)
# and everything outside the towers are kept.
_TOWER_ATTRIBUTES = (
    [
        (modeling_clip, name)
        for name in (
            "CLIPVisionEmbeddings",
            "CLIPAttention",
            "CLIPEncoderLayer",
            "CLIPEncoder",
            "CLIPVisionTransformer",
            "CLIPVisionModel",
        )
    ]
    + [(modeling_bert.BertSdpaSelfAttention, "forward"), (modeling_bert.BertModel, "forward")]
    + [(ModuleUtilsMixin, "get_extended_attention_mask"), (ModuleUtilsMixin, "invert_attention_mask")]
    + [(PreTrainedModel, "_check_and_enable_sdpa")]
)
_ABSENT = object()


@contextlib.contextmanager
def transformers_towers_kept():
    """Undo, on exit, what optimum-habana patches in the transformers code our towers are built from: each attribute
    as the owner itself defined it (a classmethod stays one), and what the patch added is removed."""
    saved = [(owner, name, vars(owner).get(name, _ABSENT)) for owner, name in _TOWER_ATTRIBUTES]
    try:
        yield
    finally:
        for owner, name, value in saved:
            if value is not _ABSENT:
                setattr(owner, name, value)
            elif name in vars(owner):
                delattr(owner, name)


def use_gaudi_fused_sdpa() -> None:
    """Habana's fused SDPA (optimum-habana's registry function, which passes the module's scale) for every tower:
    CLIP through transformers' registry, RoBERTa / BERT through `device.attention`. HPU only (imports the kernel)."""
    from optimum.habana.transformers.integrations.gaudi_fused_sdpa_attention import (
        gaudi_fused_sdpa_attention_forward,
    )

    register_tower_attention(GAUDI_ATTENTION, gaudi_fused_sdpa_attention_forward)


def load_gaudi_config(args) -> GaudiConfig:
    """The GaudiConfig: `--gaudi_config_name` or the shipped one (fused AdamW, fused clip-norm, bf16 autocast). Under
    DeepSpeed, bf16 comes from the DeepSpeed JSON (no autocast: optimum-habana's DeepSpeed guide); fused AdamW stays,
    as DeepSpeed's own FusedAdam (`CorrectedGaudiTrainer.hpu_optimizer`)."""
    config = GaudiConfig.from_pretrained(args.gaudi_config_name or DEFAULT_GAUDI_CONFIG)
    if args.deepspeed:
        config.use_torch_autocast = False
    return config


class CorrectedGaudiTrainer(GaudiTrainer):
    """GaudiTrainer with the GaudiConfig loaded from the arguments, transformers' loss scaling under gradient
    accumulation, and Habana's fused AdamW offered to subclasses (`hpu_optimizer`). Knows nothing of
    BridgeTower: `training.trainer` puts BridgeTower's optimizer groups and metrics on top."""

    def __init__(self, *args, gaudi_config: GaudiConfig | None = None, **kwargs):
        self._divide_loss = False
        training_args = kwargs.get("args")
        super().__init__(*args, gaudi_config=gaudi_config or load_gaudi_config(training_args), **kwargs)

    def hpu_optimizer(self):
        """(optimizer class, extra kwargs) of Habana's fused AdamW when the GaudiConfig asks for it on HPU, else None
        (torch's AdamW). Without DeepSpeed: habana_frameworks' FusedAdamW, as GaudiTrainer uses it. Under DeepSpeed:
        DeepSpeed's FusedAdam in AdamW mode, the optimizer ZeRO (stage 3 included) is tested with; on HPU its op
        builder (op_builder/hpu/fused_adam.py, in Habana's fork and upstream) runs the same Habana kernel
        (torch.ops.hpu.optimizer_adamw)."""
        if not (self.gaudi_config.use_fused_adam and self.args.use_habana):
            return None
        if self.args.deepspeed:
            from deepspeed.ops.adam import FusedAdam

            return FusedAdam, {"adam_w_mode": True}
        from habana_frameworks.torch.hpex.optimizers import FusedAdamW

        return FusedAdamW, {}

    def training_step(self, model, inputs, num_items_in_batch=None):
        # GaudiTrainer 1.21.2 divides the loss by the accumulation steps only under lazy mode + pipelining_fwd_bwd;
        # transformers' Trainer does it whenever the model does not normalise by num_items_in_batch itself (also
        # under DeepSpeed, with scale_wrt_gas off). Without this, gradients are N times too large.
        self._divide_loss = (
            not (self.args.use_lazy_mode and self.args.pipelining_fwd_bwd)
            and (not self.model_accepts_loss_kwargs or num_items_in_batch is None)
            and self.compute_loss_func is None
        )
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._divide_loss = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if not self._divide_loss:
            return result
        steps = self.current_gradient_accumulation_steps
        return (result[0] / steps, result[1]) if return_outputs else result / steps

    def log(self, logs, start_time=None, end_time=None):
        if self.args.use_habana:
            return super().log(logs, start_time, end_time)
        # GaudiTrainer.log reads HPU memory statistics; off HPU (the CPU contract test) log as transformers does.
        return Trainer.log(self, logs, start_time)


def wrap_in_hpu_graph(module):
    """`module` replayed as an HPU graph (inference in lazy mode: one capture per input shape, so callers keep shapes
    static). Used by `bridgetower_gaudi.pipeline` on HPU only."""
    from habana_frameworks.torch.hpu import wrap_in_hpu_graph as wrap

    return wrap(module)


def register_hccl_backend() -> None:
    """Make torch.distributed's "hccl" backend (Gaudi's collectives) available: importing Habana's module registers
    it. For processes that start their own group (run_eval_retrieval.py under torchrun); Trainer does it itself."""
    import habana_frameworks.torch.distributed.hccl  # noqa: F401
