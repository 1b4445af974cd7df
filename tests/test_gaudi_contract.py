"""The Gaudi path is wired right without Gaudi: optimum-habana's GaudiTrainer, GaudiTrainingArguments and
GaudiConfig accept what we pass, and two training steps run on CPU (`use_habana=False, use_cpu=True`).

optimum-habana checks the SynapseAI version at import by asking `pip list` for habana-torch-plugin; the test-only
shim is a dist-info folder that makes that line exist. Nothing else is faked."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

HPU_IMPORT = re.compile(r"^\s*(from|import)\s+(optimum|habana_frameworks)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_shim(folder) -> str:
    info = folder / "habana_torch_plugin-1.24.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: habana-torch-plugin\nVersion: 1.24.0\n")
    return str(folder)


def run_check(tmp_path, check: str) -> dict:
    """One check of gaudi_contract.py in a subprocess with the shim (optimum-habana patches transformers globally)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([write_shim(tmp_path / "shim"), ROOT]), TOKENIZERS_PARALLELISM="false"
    )
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "gaudi_contract.py"), check, str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("CONTRACT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
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
    assert len(report["gaudi_losses"]) == len(report["trainer_losses"]) == 2
    assert report["gaudi_losses"] == pytest.approx(report["trainer_losses"], rel=1e-4)
    assert report["max_weight_difference"] < 1e-5


def test_deepspeed_turns_fused_adamw_and_autocast_off(tmp_path):
    """(6) optimum-habana's DeepSpeed guide: DeepSpeed owns bf16 and the optimizer."""
    assert run_check(tmp_path, "deepspeed_optimizer") == {"use_fused_adam": False, "use_torch_autocast": False}


def test_gaudi_patches_of_the_tower_classes_are_undone(tmp_path):
    """(5) adapt_transformers_to_gaudi's CLIP / BERT replacements never reach our towers."""
    report = run_check(tmp_path, "towers_kept")
    assert report["patched_inside"] and report["restored"]
    assert report["vision_attention"] == "CLIPAttention" and report["text_attention"] == "BertSdpaSelfAttention"


def test_optimum_habana_is_imported_only_by_the_device_module():
    offenders = []
    for folder, _, files in os.walk(os.path.join(ROOT, "bridgetower_gaudi")):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and not path.endswith(os.path.join("device", "gaudi.py")):
                with open(path) as f:
                    if any(HPU_IMPORT.match(line) for line in f):
                        offenders.append(os.path.relpath(path, ROOT))
    assert offenders == []
