"""`python -m bridgetower_gaudi.device`: the doctor a node operator runs first (in the container too).

It prints the stack it sees (backend and cards, Synapse, torch, transformers, optimum-habana, DeepSpeed and whether it
is Habana's fork, lazy mode, HCCL), runs one training step and one inference of a tiny BridgeTower on the device, and
exits non-zero with the fix for each problem found. Works on CPU and CUDA too (then the Gaudi checks are skipped).
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys

import torch
from transformers.utils import is_torch_hpu_available

from . import (
    GAUDI_STACK,
    habana_deepspeed_install_command,
    installed_version,
    synapse_version,
    unwritable_directory_problem,
)

PACKAGES = ("bridgetower-gaudi", "torch", "transformers", "accelerate", "optimum-habana", "deepspeed")


def _hccl_available() -> bool:
    if importlib.util.find_spec("habana_frameworks") is None:
        return False
    return importlib.util.find_spec("habana_frameworks.torch.distributed.hccl") is not None


def report() -> dict:
    """What this machine has: the backend, its cards and the software stack."""
    hpu = is_torch_hpu_available()
    if hpu:
        backend = f"hpu ({torch.hpu.device_count()} cards)"
    elif torch.cuda.is_available():
        backend = f"cuda ({torch.cuda.device_count()} GPUs)"
    else:
        backend = "cpu"
    lazy = os.environ.get("PT_HPU_LAZY_MODE")
    deepspeed = installed_version("deepspeed")
    info = {
        "hpu": hpu,
        "backend": backend,
        "synapse": synapse_version() or "not installed",
        **{package: installed_version(package) or "not installed" for package in PACKAGES},
        "deepspeed_fork": bool(deepspeed and "+hpu.synapse.v" in deepspeed),
        "lazy_mode": "on" if lazy == "1" else f"off (PT_HPU_LAZY_MODE={lazy if lazy is not None else 'unset'})",
        "hccl": "available" if _hccl_available() else "not available",
        "habana_logs": os.environ.get("HABANA_LOGS", "unset"),
    }
    return info


def problems(info: dict) -> list[str]:
    """Each thing that would stop or mislead a Gaudi run, with its fix (nothing off HPU)."""
    if not info["hpu"]:
        return []
    found = []
    want = GAUDI_STACK
    synapse = info["synapse"]
    if synapse.split(".")[:2] != want["synapse"].split(".")[:2]:
        found.append(
            f"Synapse {synapse}: optimum-habana {want['optimum-habana']} is validated with {want['synapse']}; run "
            f"inside Intel's {want['synapse']} image (docs/guides/gaudi.md, version table)."
        )
    elif info["torch"].split("+")[0].split(".")[:2] != want["torch"].split(".")[:2]:
        found.append(
            f"torch {info['torch']}: Intel's Synapse {want['synapse']} image ships torch {want['torch']}; a pip "
            "install replaced it: rebuild the image, and install with `bash run_scripts/setup.sh --hpu`, which keeps "
            "the image's torch."
        )
    if info["optimum-habana"] != want["optimum-habana"]:
        found.append(
            f"optimum-habana {info['optimum-habana']}: install {want['optimum-habana']} "
            "(`bash run_scripts/setup.sh --hpu`)."
        )
    if info["deepspeed"] != "not installed" and not info["deepspeed_fork"]:
        found.append(
            f"deepspeed {info['deepspeed']} is PyPI's, not Habana's fork (--deepspeed would be refused): "
            f"{habana_deepspeed_install_command()}"
        )
    if info["hccl"] != "available":
        found.append(
            "HCCL (habana_frameworks.torch.distributed.hccl) cannot be imported: multi-card runs would fail; use "
            "Intel's Gaudi PyTorch image, whose habana-torch-plugin provides it."
        )
    if info["habana_logs"] != "unset":
        problem = unwritable_directory_problem(info["habana_logs"], "HABANA_LOGS")
        if problem:
            found.append(problem)
    return found


def notes(info: dict) -> list[str]:
    """What is worth knowing but not wrong: eager mode is a valid choice (with --torch_compile)."""
    if info["hpu"] and not info["lazy_mode"].startswith("on"):
        return [
            f"lazy mode is {info['lazy_mode']}, so this check ran in eager mode. The run scripts use lazy mode unless "
            "PT_HPU_LAZY_MODE=0 is exported (then pass --use_lazy_mode False --torch_compile); to check lazy mode, "
            "export PT_HPU_LAZY_MODE=1 before starting the doctor."
        ]
    return []


def smoke_test(device: str) -> tuple[list[str], list[str]]:
    """One training step and one inference of a tiny BridgeTower (masked LM) on `device`: (lines to print,
    problems)."""
    from ..modeling import PRESETS, BridgeTowerConfig, BridgeTowerForMaskedLM

    mark_step = lambda: None  # noqa: E731
    if device == "hpu":  # lazy mode runs the accumulated graph at mark_step
        import habana_frameworks.torch.core as htcore

        mark_step = htcore.mark_step
    lines, found = [], []
    try:
        torch.manual_seed(0)
        config = BridgeTowerConfig(**PRESETS["tiny"])
        model = BridgeTowerForMaskedLM(config).to(device)
        size, vocab = config.vision_config.image_size, config.text_config.vocab_size
        input_ids = torch.randint(3, vocab, (2, 16)).to(device)
        batch = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                     pixel_values=torch.randn(2, 3, size, size).to(device))  # fmt: skip
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loss = model(**batch, labels=input_ids).loss
        loss.backward()
        mark_step()
        optimizer.step()
        mark_step()
        loss = loss.item()
        lines.append(f"training step: {'ok' if math.isfinite(loss) else 'FAILED'} (loss {loss:.4f})")
        if not math.isfinite(loss):
            found.append(f"the training step on {device} gave a non-finite loss ({loss}).")
        model.eval()
        with torch.no_grad():
            logits = model(**batch).logits
            mark_step()
            finite = bool(torch.isfinite(logits).all().item())
        lines.append(f"inference: {'ok' if finite else 'FAILED'} (logits {tuple(logits.shape)})")
        if not finite:
            found.append(f"inference on {device} gave non-finite logits.")
    except Exception as error:  # the doctor reports every failure instead of stopping at a traceback
        lines.append(f"smoke test: FAILED ({type(error).__name__}: {error})")
        found.append(
            f"a tiny training step / inference on {device} failed: {type(error).__name__}: {error}. Check the driver "
            "(hl-smi), HABANA_VISIBLE_DEVICES and that the container runs with --runtime=habana."
        )
    return lines, found


def main(argv: list[str] | None = None) -> int:
    info = report()
    for key, value in info.items():
        if key != "hpu":
            print(f"{key}: {value}")
    device = "hpu" if info["hpu"] else "cuda" if torch.cuda.is_available() else "cpu"
    lines, failed = smoke_test(device)
    for line in lines:
        print(line)
    found = problems(info) + failed
    for note in notes(info):
        print(f"note: {note}")
    for problem in found:
        print(f"PROBLEM: {problem}")
    print("doctor: " + (f"{len(found)} problem(s), see above" if found else f"ok on {device}"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
