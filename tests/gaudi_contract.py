"""Run our GaudiTrainer path on CPU (called by test_gaudi_contract.py in a subprocess whose PYTHONPATH holds a
test-only shim for optimum-habana's SynapseAI version check). `python gaudi_contract.py CHECK OUTPUT_DIR`."""

import importlib.abc
import importlib.machinery
import json
import sys
import types

import torch

from bridgetower_gaudi.device import DEFAULT_GAUDI_CONFIG, resolve_training_arguments
from bridgetower_gaudi.training.pretrain import build_trainer, parse_args

FLAGS = ["--do_train", "--max_steps", "2", "--per_device_train_batch_size", "4", "--max_seq_length", "16",
         "--synthetic_train_size", "32", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
         # On CPU: no --use_habana, no lazy mode, bf16 autocast on the CPU instead of the HPU.
         "--use_cpu", "--use_lazy_mode", "False", "--bf16", "--half_precision_backend", "cpu_amp"]  # fmt: skip


def gaudi_trainer(output_dir, flags):
    from bridgetower_gaudi.device.gaudi import BridgeTowerGaudiTrainingArguments

    # The same parser as `run_pretrain.py --use_habana`, with the Gaudi arguments class.
    model_args, data_args, pretraining_args, args = parse_args(
        ["--output_dir", output_dir, *flags], training_arguments_class=BridgeTowerGaudiTrainingArguments
    )
    return build_trainer(model_args, data_args, pretraining_args, resolve_training_arguments(args))


def contract(output_dir: str) -> dict:
    from optimum.habana import GaudiConfig, GaudiTrainer, GaudiTrainingArguments

    trainer = gaudi_trainer(output_dir, FLAGS)
    result = trainer.train()
    config = trainer.gaudi_config
    return {
        "is_gaudi_trainer": isinstance(trainer, GaudiTrainer),
        "is_gaudi_args": isinstance(trainer.args, GaudiTrainingArguments),
        "is_gaudi_config": isinstance(config, GaudiConfig),
        "use_fused_adam": config.use_fused_adam,
        "use_fused_clip_norm": config.use_fused_clip_norm,
        "use_torch_autocast": config.use_torch_autocast,
        "adam_beta2": trainer.args.adam_beta2,
        "warmup_ratio": trainer.args.warmup_ratio,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "optimizer_groups": len(trainer.optimizer.param_groups),
    }


def gaudi_config(output_dir: str) -> dict:
    """The shipped GaudiConfig once habana_frameworks.torch.core is loaded (autoloaded with torch, Synapse >= 1.18)."""
    from optimum.habana import GaudiConfig

    sys.modules.setdefault("habana_frameworks", types.ModuleType("habana_frameworks"))
    sys.modules.setdefault("habana_frameworks.torch", types.ModuleType("habana_frameworks.torch"))
    sys.modules.setdefault("habana_frameworks.torch.core", types.ModuleType("habana_frameworks.torch.core"))
    config = GaudiConfig.from_pretrained(DEFAULT_GAUDI_CONFIG)
    try:
        config.declare_autocast_bf16_fp32_ops()
        error = None
    except RuntimeError as e:
        error = str(e)
    return {"keys": sorted(k for k, v in config.to_dict().items() if v not in (None, False)), "error": error}


ACCUMULATION_FLAGS = [
    "--do_train", "--max_steps", "2", "--per_device_train_batch_size", "4", "--max_seq_length", "16",
    "--synthetic_train_size", "32", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
    "--gradient_accumulation_steps", "2", "--shuffle_train_data", "False", "--deterministic_masking", "True",
    "--config_overrides", "hidden_dropout_prob=0.0", "--use_cpu", "--seed", "0",
    "--lr_scheduler_type", "constant", "--warmup_ratio", "0", "--adam_epsilon", "1e-8", "--max_grad_norm", "0",
]  # fmt: skip


def compare_with_trainer(output_dir: str, prepare=None) -> dict:
    """Losses and weights after 2 optimizer steps with gradient accumulation 2: GaudiTrainer path (set up further by
    `prepare(trainer)` when given) vs transformers' Trainer path."""
    from bridgetower_gaudi.training.pretrain import parse_args as parse

    gaudi = gaudi_trainer(output_dir + "/gaudi", [*ACCUMULATION_FLAGS, "--use_lazy_mode", "False"])
    if prepare is not None:
        prepare(gaudi)
    divided, compute_loss = [], type(gaudi).compute_loss

    def recording(self, *args, **kwargs):  # whether our subclass divides the loss, seen inside each training step
        if torch.is_grad_enabled():
            divided.append(self._divide_loss)
        return compute_loss(self, *args, **kwargs)

    type(gaudi).compute_loss = recording
    gaudi.train()
    model_args, data_args, pretraining_args, args = parse(["--output_dir", output_dir + "/hf", *ACCUMULATION_FLAGS])
    plain = build_trainer(model_args, data_args, pretraining_args, resolve_training_arguments(args))
    plain.train()
    losses = lambda trainer: [h["loss"] for h in trainer.state.log_history if "loss" in h]
    gaudi_state, plain_state = gaudi.model.state_dict(), plain.model.state_dict()
    return {
        "ours_divided": divided,
        "gaudi_losses": losses(gaudi),
        "trainer_losses": losses(plain),
        "max_weight_difference": max(
            (gaudi_state[k].float() - plain_state[k].float()).abs().max().item() for k in plain_state
        ),
    }


def accumulation(output_dir: str) -> dict:
    return compare_with_trainer(output_dir)


def deepspeed_optimizer(output_dir: str) -> dict:
    """With --deepspeed the GaudiConfig turns autocast off (bf16 comes from the DeepSpeed JSON) and keeps fused AdamW
    (DeepSpeed's FusedAdam, see hpu_optimizer)."""
    from types import SimpleNamespace

    from bridgetower_gaudi.device.gaudi import load_gaudi_config

    config = load_gaudi_config(SimpleNamespace(gaudi_config_name=None, deepspeed="run_scripts/ds_zero2.json"))
    return {"use_fused_adam": config.use_fused_adam, "use_torch_autocast": config.use_torch_autocast}


class _StubMeta(type):
    """A stand-in for any habana_frameworks name: attribute access and calls give further stand-ins."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubMeta(name, (), {})

    def __call__(cls, *args, **kwargs):
        return _StubMeta("instance", (), {})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _StubMeta(name, (), {})
        setattr(self, name, value)
        return value


class FakeHabanaFrameworks(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """habana_frameworks (and torchvision, which optimum-habana's model packages import) as stand-in packages:
    enough for `optimum.habana.transformers.modeling_utils` to import and adapt_transformers_to_gaudi() to run on
    CPU. Names a check needs to behave (FusedAdamW, wrap_in_hpu_graph, ...) are set on the modules explicitly."""

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("habana_frameworks", "torchvision"):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def fake_habana_frameworks() -> None:
    if not any(isinstance(finder, FakeHabanaFrameworks) for finder in sys.meta_path):
        sys.meta_path.insert(0, FakeHabanaFrameworks())


def _tiny_outputs(backbone: str) -> tuple[dict, torch.Tensor]:
    """A tiny BridgeTower's weights and its pooled output on fixed inputs, built from the current transformers."""
    from bridgetower_gaudi import BridgeTowerModel
    from tests.conftest import make_inputs, tiny_config

    torch.manual_seed(0)
    model = BridgeTowerModel(tiny_config(text_backbone=backbone)).eval()
    with torch.no_grad():
        return model, model(**make_inputs(model.config)).pooler_output


def towers_kept(output_dir: str) -> dict:
    """optimum-habana's real adapt_transformers_to_gaudi() (what GaudiTrainingArguments runs on HPU; its
    habana_frameworks imports faked) inside the parsing context: what it replaced in the towers' transformers code is
    put back, so a model built afterwards computes exactly what one built before it does."""
    fake_habana_frameworks()
    from optimum.habana.transformers.modeling_utils import adapt_transformers_to_gaudi
    from transformers.modeling_utils import ModuleUtilsMixin, PreTrainedModel
    from transformers.models.bert import modeling_bert
    from transformers.models.clip import modeling_clip

    from bridgetower_gaudi.device import parsing_context
    from bridgetower_gaudi.device.gaudi import BridgeTowerGaudiTrainingArguments

    def tower_code():
        return {
            "CLIPAttention": modeling_clip.CLIPAttention,
            "BertSdpaSelfAttention.forward": modeling_bert.BertSdpaSelfAttention.forward,
            "get_extended_attention_mask": vars(ModuleUtilsMixin)["get_extended_attention_mask"],
            "invert_attention_mask": vars(ModuleUtilsMixin)["invert_attention_mask"],
            "_check_and_enable_sdpa": vars(PreTrainedModel).get("_check_and_enable_sdpa"),
        }

    before = {backbone: _tiny_outputs(backbone) for backbone in ("roberta", "bert")}
    originals = tower_code()
    with parsing_context(BridgeTowerGaudiTrainingArguments):
        adapt_transformers_to_gaudi()
        patched_inside = sorted(name for name, value in tower_code().items() if value is not originals[name])
    restored = sorted(name for name, value in tower_code().items() if value is originals[name])
    report = {"patched_inside": patched_inside, "restored": restored, "same_outputs": {}, "attention": {}}
    for backbone, (reference, expected) in before.items():
        model, _ = _tiny_outputs(backbone)
        model.load_state_dict(reference.state_dict())
        from tests.conftest import make_inputs

        with torch.no_grad():
            got = model(**make_inputs(model.config)).pooler_output
        report["same_outputs"][backbone] = bool(torch.equal(got, expected))
        report["attention"][backbone] = [
            type(model.vision_model.encoder.layers[0].self_attn).__name__,
            type(model.text_model.encoder.layer[0].attention.self).__name__,
        ]
    return report


def fused_sdpa_signature(output_dir: str) -> dict:
    """Every call our towers make through the attention registry (recorded with a stand-in kernel) binds to the
    signature of optimum-habana's real gaudi_fused_sdpa_attention_forward (loaded with habana_frameworks faked)."""
    import inspect

    fake_habana_frameworks()
    from optimum.habana.transformers.integrations.gaudi_fused_sdpa_attention import (
        gaudi_fused_sdpa_attention_forward,
    )
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from bridgetower_gaudi import BridgeTowerModel
    from bridgetower_gaudi.device.attention import register_tower_attention
    from tests.conftest import make_inputs, tiny_config

    calls = []

    def stand_in(module, query, key, value, attention_mask, **kwargs):
        calls.append((type(module).__name__, sorted(kwargs)))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    register_tower_attention("contract_stand_in", stand_in)
    for backbone in ("roberta", "bert"):
        model = BridgeTowerModel(tiny_config(text_backbone=backbone, attn_implementation="contract_stand_in"))
        with torch.no_grad():
            model(**make_inputs(model.config))
    signature = inspect.signature(gaudi_fused_sdpa_attention_forward)
    unbound = []
    for module, keywords in {(m, tuple(k)) for m, k in calls}:
        try:
            signature.bind(object(), *(torch.zeros(1),) * 3, None, **dict.fromkeys(keywords, 0.0))
        except TypeError as error:
            unbound.append(f"{module}: {error}")
    return {
        "parameters": list(signature.parameters),
        "towers": sorted({m for m, _ in calls}),
        "keywords": sorted({k for _, ks in calls for k in ks}),
        "unbound": unbound,
    }


def hpu_optimizer(output_dir: str) -> dict:
    """The optimizer our Gaudi trainer builds on HPU, with Habana's FusedAdamW and DeepSpeed's FusedAdam stubbed at
    their import: its class, its keyword arguments and BridgeTower's parameter groups."""
    fake_habana_frameworks()
    import deepspeed.ops.adam
    import habana_frameworks.torch.hpex.optimizers as hpex_optimizers

    created = []

    class FusedAdamW(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            created.append(kwargs)
            super().__init__(params, **kwargs)

    class FusedAdam(torch.optim.AdamW):
        def __init__(self, params, adam_w_mode=False, **kwargs):
            created.append({"adam_w_mode": adam_w_mode, **kwargs})
            super().__init__(params, **kwargs)

    hpex_optimizers.FusedAdamW = FusedAdamW
    deepspeed.ops.adam.FusedAdam = FusedAdam
    trainer = gaudi_trainer(output_dir, FLAGS)
    trainer.args.use_habana = True  # what the optimizer choice reads; the CPU run keeps its CPU device
    report = {}
    for name, deepspeed_config in (("plain", None), ("deepspeed", "run_scripts/ds_zero2.json")):
        trainer.args.deepspeed, trainer.optimizer = deepspeed_config, None
        optimizer = trainer.create_optimizer()
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        report[name] = {
            "class": type(optimizer).__name__,
            "kwargs": {k: v for k, v in created[-1].items() if k in ("adam_w_mode", "betas", "eps")},
            "groups": [
                {"lr": g["lr"], "weight_decay": g["weight_decay"], "names": sorted(names[id(p)] for p in g["params"])}
                for g in optimizer.param_groups
            ],
            "trainable": sorted(n for n, p in trainer.model.named_parameters() if p.requires_grad),
            "learning_rate": trainer.args.learning_rate,
        }
    trainer.args.use_habana = False
    trainer.optimizer = None
    report["cpu"] = type(trainer.create_optimizer()).__name__
    return report


def hpu_graph_and_hccl(output_dir: str) -> dict:
    """wrap_in_hpu_graph hands the module to Habana's wrapper; register_hccl_backend imports Habana's HCCL module,
    whose import registers the backend (both stubbed at habana_frameworks)."""
    fake_habana_frameworks()
    import habana_frameworks.torch.hpu as hpu

    from bridgetower_gaudi.device.gaudi import register_hccl_backend, wrap_in_hpu_graph

    wrapped = []
    hpu.wrap_in_hpu_graph = lambda module: wrapped.append(module) or ("graph", module)
    module = torch.nn.Linear(2, 2)
    result = wrap_in_hpu_graph(module)
    loaded_before = "habana_frameworks.torch.distributed.hccl" in sys.modules
    register_hccl_backend()
    return {
        "wrapped_once": wrapped == [module],
        "returned_wrapper": result == ("graph", module),
        "hccl_loaded_before": loaded_before,
        "hccl_loaded_after": "habana_frameworks.torch.distributed.hccl" in sys.modules,
    }


def lazy_accumulation(output_dir: str) -> dict:
    """Lazy mode with pipelining_fwd_bwd: GaudiTrainer divides the loss by the accumulation steps itself, so ours
    must not divide again. Trained on CPU with habana_frameworks' mark_step stubbed (counted)."""
    fake_habana_frameworks()
    marks = []

    def lazy(gaudi):
        # GaudiTrainingArguments refuses lazy mode without --use_habana; the training step reads these as it runs.
        gaudi.args.use_lazy_mode = gaudi.args.pipelining_fwd_bwd = True
        gaudi.htcore = types.SimpleNamespace(mark_step=lambda *a, **k: marks.append(1))

    report = compare_with_trainer(output_dir, lazy)
    return {"mark_steps": len(marks), **report}


if __name__ == "__main__":
    torch.set_num_threads(1)
    check, output = sys.argv[1], sys.argv[2]
    print("CONTRACT " + json.dumps(globals()[check](output)))
