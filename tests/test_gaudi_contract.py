"""The Gaudi path is wired right without Gaudi: optimum-habana's GaudiTrainer, GaudiTrainingArguments and
GaudiConfig accept what we pass, and two training steps run on CPU (`use_habana=False, use_cpu=True`).

optimum-habana checks the SynapseAI version at import by asking `pip list` for habana-torch-plugin; the test-only
shim is a dist-info folder that makes that line exist. Checks that need optimum-habana's HPU modules (its
adapt_transformers_to_gaudi, fused SDPA, the HPU optimizer, HPU graphs, HCCL, lazy mode) also fake habana_frameworks at
its import (`gaudi_contract.FakeHabanaFrameworks`); optimum-habana's own code runs unchanged."""

import json
import math
import os
import sys

import pytest

from tests.processes import ROOT, child_environment, failure_report, python_script, run_checked


def write_shim(folder) -> str:
    info = folder / "habana_torch_plugin-1.24.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: habana-torch-plugin\nVersion: 1.24.0\n")
    return str(folder)


def run_check(tmp_path, check: str) -> dict:
    """One check of gaudi_contract.py in a subprocess with the shim (optimum-habana patches transformers globally)."""
    env = {**child_environment(), "PYTHONPATH": os.pathsep.join([write_shim(tmp_path / "shim"), ROOT])}
    done = run_checked(python_script("tests/gaudi_contract.py", check, str(tmp_path / "out")), env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("CONTRACT ")]
    assert lines, failure_report(done)
    return json.loads(lines[-1][len("CONTRACT ") :])


@pytest.mark.slow
def test_gaudi_trainer_path_trains_two_steps_on_cpu(tmp_path):
    report = run_check(tmp_path, "contract")
    assert report["is_gaudi_trainer"] and report["is_gaudi_args"] and report["is_gaudi_config"]
    assert report["use_fused_adam"] and report["use_fused_clip_norm"] and report["use_torch_autocast"]
    assert report["global_step"] == 2 and math.isfinite(report["train_loss"])
    assert report["optimizer_groups"] >= 3  # BridgeTower's lr-multiplier groups reached GaudiTrainer
    assert report["adam_beta2"] == 0.98 and report["warmup_ratio"] == 0.1  # the paper's optimiser flags too


def test_shipped_gaudi_config_loads_after_habana_core(tmp_path):
    """(1) Op lists in the GaudiConfig raise once habana_frameworks.torch.core is loaded: ship Habana/clip's keys."""
    report = run_check(tmp_path, "gaudi_config")
    assert report["error"] is None
    assert {"use_fused_adam", "use_fused_clip_norm", "use_torch_autocast"} <= set(report["keys"])


@pytest.mark.slow
def test_gaudi_trainer_matches_trainer_with_gradient_accumulation(tmp_path):
    """(3) GaudiTrainer 1.21.2 leaves the loss undivided by the accumulation steps outside lazy + pipelining."""
    report = run_check(tmp_path, "accumulation")
    assert report["ours_divided"] == [True] * 4  # outside lazy + pipelining, ours divides
    assert len(report["gaudi_losses"]) == len(report["trainer_losses"]) == 2
    assert report["gaudi_losses"] == pytest.approx(report["trainer_losses"], rel=1e-4)
    assert report["max_weight_difference"] < 1e-5


def test_deepspeed_turns_autocast_off_and_keeps_fused_adamw(tmp_path):
    """(6) optimum-habana's DeepSpeed guide: bf16 comes from the DeepSpeed JSON; fused AdamW stays (DeepSpeed's)."""
    assert run_check(tmp_path, "deepspeed_optimizer") == {"use_fused_adam": True, "use_torch_autocast": False}


TOWER_CODE = ["BertSdpaSelfAttention.forward", "CLIPAttention", "_check_and_enable_sdpa", "get_extended_attention_mask",
              "invert_attention_mask"]  # fmt: skip


@pytest.mark.slow
def test_gaudi_patches_of_the_tower_classes_are_undone(tmp_path):
    """(5) optimum-habana's real adapt_transformers_to_gaudi() runs inside the parsing context (habana_frameworks
    faked): every piece of tower code it replaces is put back, and tiny RoBERTa and BERT BridgeTowers built afterwards
    give bit-identical outputs to ones built before it ran."""
    report = run_check(tmp_path, "towers_kept")
    assert report["patched_inside"] == TOWER_CODE  # it did replace them, so the restore is tested
    assert report["restored"] == TOWER_CODE
    assert report["same_outputs"] == {"roberta": True, "bert": True}
    assert report["attention"] == {"roberta": ["CLIPAttention", "RobertaSdpaSelfAttention"],
                                   "bert": ["CLIPAttention", "BertSdpaSelfAttention"]}  # fmt: skip


def test_every_tower_attention_call_binds_to_optimum_habanas_fused_sdpa(tmp_path):
    """The kwargs every tower (CLIP, RoBERTa, BERT, the cross-modal layers) passes through the attention registry fit
    the signature of optimum-habana's real gaudi_fused_sdpa_attention_forward, read from its source."""
    report = run_check(tmp_path, "fused_sdpa_signature")
    assert report["parameters"][:5] == ["module", "query", "key", "value", "attention_mask"]
    assert {"dropout", "scaling", "is_causal"} <= set(report["parameters"])
    assert {"CLIPAttention", "RobertaSdpaSelfAttentionRegistry", "BertSdpaSelfAttentionRegistry"} <= set(
        report["towers"]
    )
    assert {"dropout", "scaling"} <= set(report["keywords"]) and report["unbound"] == []


@pytest.mark.slow
def test_hpu_optimizer_is_habanas_fused_adamw_with_bridgetowers_groups(tmp_path):
    """On HPU: habana_frameworks' FusedAdamW; under DeepSpeed: DeepSpeed's FusedAdam in AdamW mode (its HPU op runs
    Habana's kernel); both with BridgeTower's groups (cross-modal x5, heads x5, no decay on biases / LayerNorm)."""
    report = run_check(tmp_path, "hpu_optimizer")
    assert report["plain"]["class"] == "FusedAdamW" and report["deepspeed"]["class"] == "FusedAdam"
    assert report["deepspeed"]["kwargs"]["adam_w_mode"] is True
    assert report["plain"]["kwargs"] == {"betas": [0.9, 0.98], "eps": 1e-8}
    assert report["cpu"] == "AdamW"
    for run in ("plain", "deepspeed"):
        groups, lr = report[run]["groups"], report[run]["learning_rate"]
        placed = [name for group in groups for name in group["names"]]
        assert sorted(placed) == report[run]["trainable"]  # every trainable parameter, once
        assert {(g["lr"], g["weight_decay"]) for g in groups} == {(r * lr, wd) for r in (1, 5) for wd in (0.0, 0.01)}
        for group in groups:
            base = group["lr"] == pytest.approx(lr)
            assert base == all("cross_modal" not in n and "mlm_score" not in n and "itm_score" not in n
                               for n in group["names"])  # fmt: skip
            assert (group["weight_decay"] == 0.0) == all(n.endswith("bias") or "LayerNorm" in n or "norm" in n
                                                         for n in group["names"])  # fmt: skip


def test_hpu_graph_wrapper_and_hccl_registration_reach_habanas_modules(tmp_path):
    assert run_check(tmp_path, "hpu_graph_and_hccl") == {
        "wrapped_once": True, "returned_wrapper": True, "hccl_loaded_before": False, "hccl_loaded_after": True,
    }  # fmt: skip


@pytest.mark.slow
def test_lazy_mode_with_pipelining_divides_the_loss_once(tmp_path):
    """Lazy mode + pipelining_fwd_bwd: GaudiTrainer divides by the accumulation steps itself; ours must not divide
    again (losses and weights equal transformers' Trainer's)."""
    report = run_check(tmp_path, "lazy_accumulation")
    assert report["mark_steps"] > 0  # GaudiTrainer's lazy branch ran
    assert report["ours_divided"] == [False] * 4  # 2 optimizer steps x 2 micro-steps: GaudiTrainer's division only
    assert report["gaudi_losses"] == pytest.approx(report["trainer_losses"], rel=1e-4)
    assert report["max_weight_difference"] < 1e-5


BLOCKING_IMPORT = """
import importlib, importlib.abc, importlib.machinery, pkgutil, sys
class Blocked(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # Found (as on a machine with optimum-habana installed), but importing it raises.
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("optimum", "habana_frameworks"):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
    def create_module(self, spec):
        raise ImportError(f"blocked: {spec.name}")
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, Blocked())
import bridgetower_gaudi
names = [m.name for m in pkgutil.walk_packages(bridgetower_gaudi.__path__, "bridgetower_gaudi.")]
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as error:
        failed[name] = str(error)
print("IMPORTS", len(names), sorted(failed.items()))
"""


def test_optimum_habana_is_imported_only_by_the_device_module():
    """Every module of the package imports with optimum and habana_frameworks blocked, but device.gaudi."""
    done = run_checked([sys.executable, "-c", BLOCKING_IMPORT], timeout=300)
    line = next((line for line in done.stdout.splitlines() if line.startswith("IMPORTS ")), None)
    assert line, failure_report(done)
    count, failed = line.split(" ", 2)[1:]
    assert int(count) > 30
    assert failed == "[('bridgetower_gaudi.device.gaudi', 'blocked: optimum')]"
