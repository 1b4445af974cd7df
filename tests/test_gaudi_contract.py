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


@pytest.mark.slow
def test_gaudi_trainer_path_trains_two_steps_on_cpu(tmp_path):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([write_shim(tmp_path / "shim"), ROOT]), TOKENIZERS_PARALLELISM="false"
    )
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "gaudi_contract.py"), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("CONTRACT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    report = json.loads(lines[-1][len("CONTRACT ") :])
    assert report["is_gaudi_trainer"] and report["is_gaudi_args"] and report["is_gaudi_config"]
    assert report["use_fused_adam"] and report["use_fused_clip_norm"] and report["use_torch_autocast"]
    assert report["global_step"] == 2 and math.isfinite(report["train_loss"])
    assert report["optimizer_groups"] >= 3  # BridgeTower's lr-multiplier groups reached GaudiTrainer
    assert report["adam_beta2"] == 0.98 and report["warmup_ratio"] == 0.1  # the paper's optimiser flags too


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
