"""`python -m bridgetower_gaudi.device`, the doctor a Gaudi node operator runs first (issue 20, point 8): it prints the
stack, runs one training step and one inference on the device, and exits non-zero with the fix for each problem. The
HPU is faked at its boundary (transformers' HPU probe, the installed versions, HCCL, the device step)."""

import sys

import pytest
import torch

import bridgetower_gaudi.device.__main__ as doctor
from bridgetower_gaudi.device import GAUDI_STACK
from tests.processes import child_environment, failure_report, run_checked


def test_doctor_runs_a_training_step_and_an_inference_on_cpu():
    done = run_checked([sys.executable, "-m", "bridgetower_gaudi.device"], timeout=300,
                       env=child_environment(PT_HPU_LAZY_MODE="1"))  # fmt: skip
    lines = done.stdout.splitlines()
    for key in ("backend: cpu", "synapse: ", "torch: ", "optimum-habana: ", "deepspeed_fork: ", "lazy_mode: on",
                "hccl: "):  # fmt: skip
        assert any(line.startswith(key) for line in lines), failure_report(done)
    assert any(line.startswith("training step: ok (loss ") for line in lines), failure_report(done)
    assert any(line.startswith("inference: ok") for line in lines), failure_report(done)
    assert lines[-1] == "doctor: ok on cpu", failure_report(done)


@pytest.fixture
def fake_gaudi_node(monkeypatch):
    """A Gaudi node as the doctor sees it; each test breaks one part. Returns the devices the smoke test ran on."""
    versions = {"habana-torch-plugin": GAUDI_STACK["synapse"], "torch": GAUDI_STACK["torch"] + "a0+git",
                "optimum-habana": GAUDI_STACK["optimum-habana"], "deepspeed": "0.16.1+hpu.synapse.v1.24.0",
                "transformers": "4.55.4", "accelerate": "1.10.1", "bridgetower-gaudi": "0.1.0"}  # fmt: skip
    monkeypatch.setattr(doctor, "is_torch_hpu_available", lambda: True)
    monkeypatch.setattr(torch, "hpu", type("hpu", (), {"device_count": staticmethod(lambda: 8)}), raising=False)
    monkeypatch.setattr(doctor, "installed_version", versions.get)
    monkeypatch.setattr(doctor, "synapse_version", lambda: versions["habana-torch-plugin"])
    monkeypatch.setattr(doctor, "_hccl_available", lambda: True)
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "1")
    monkeypatch.delenv("HABANA_LOGS", raising=False)
    ran = []
    monkeypatch.setattr(doctor, "smoke_test", lambda device: ran.append(device) or (["training step: ok"], []))
    return versions, ran


def test_doctor_on_a_healthy_gaudi_node_exits_zero(fake_gaudi_node, capsys):
    versions, ran = fake_gaudi_node
    assert doctor.main() == 0
    out = capsys.readouterr().out
    assert ran == ["hpu"] and "backend: hpu (8 cards)" in out and "deepspeed_fork: True" in out
    assert out.splitlines()[-1] == "doctor: ok on hpu"


@pytest.mark.parametrize(
    "broken, fix",
    [
        ({"habana-torch-plugin": "1.23.0"}, "run inside Intel's 1.24.0 image"),
        ({"torch": "2.13.0"}, "setup.sh --hpu"),
        ({"optimum-habana": "1.20.0"}, "install 1.21.2"),
        ({"deepspeed": "0.19.8"}, "pip install git+https://github.com/HabanaAI/DeepSpeed.git@1.24.0"),
        ({"hccl": False}, "HCCL"),
        ({"smoke": True}, "training step / inference on hpu failed"),
    ],
)
def test_doctor_names_the_fix_and_exits_nonzero(fake_gaudi_node, monkeypatch, capsys, broken, fix):
    versions, ran = fake_gaudi_node
    if "hccl" in broken:
        monkeypatch.setattr(doctor, "_hccl_available", lambda: False)
    elif "smoke" in broken:
        failure = "a tiny training step / inference on {} failed: RuntimeError: synStatus 26"
        monkeypatch.setattr(doctor, "smoke_test", lambda device: ([], [failure.format(device)]))
    else:
        versions.update(broken)
    assert doctor.main() == 1
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM: ")]
    assert len(problems) == 1 and fix in problems[0], out
    assert out.splitlines()[-1] == "doctor: 1 problem(s), see above"


def test_doctor_notes_eager_mode_without_failing(fake_gaudi_node, monkeypatch, capsys):
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "0")
    assert doctor.main() == 0
    assert "note: lazy mode is off (PT_HPU_LAZY_MODE=0)" in capsys.readouterr().out


def test_a_failing_device_step_is_reported_not_raised():
    lines, problems = doctor.smoke_test("meta")  # a device where reading the loss back fails
    assert lines and lines[-1].startswith("smoke test: FAILED")
    assert len(problems) == 1 and "failed" in problems[0] and "hl-smi" in problems[0]
