"""`python -m bridgetower_gaudi.device`: what this machine would train on, for a container smoke test. Prints the
backend, the Intel Gaudi (Synapse) version, the library versions and whether HPU lazy mode is on; works on CPU too."""

from __future__ import annotations

import importlib.metadata
import os

import torch
from transformers.utils import is_torch_hpu_available

PACKAGES = ("bridgetower-gaudi", "torch", "transformers", "accelerate", "optimum-habana", "deepspeed",
            "habana-torch-plugin")  # fmt: skip


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> dict[str, str]:
    hpu = is_torch_hpu_available()
    if hpu:
        backend = f"hpu ({torch.hpu.device_count()} cards)"
    elif torch.cuda.is_available():
        backend = f"cuda ({torch.cuda.device_count()} GPUs)"
    else:
        backend = "cpu"
    lazy = os.environ.get("PT_HPU_LAZY_MODE")
    info = {
        "backend": backend,
        # habana-torch-plugin carries the Synapse version (what optimum-habana checks too).
        "synapse": version("habana-torch-plugin"),
        "lazy_mode": "on" if lazy == "1" else f"off (PT_HPU_LAZY_MODE={lazy if lazy is not None else 'unset'})",
    }
    info.update({package: version(package) for package in PACKAGES if package != "habana-torch-plugin"})
    return info


def main() -> None:
    for key, value in report().items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
