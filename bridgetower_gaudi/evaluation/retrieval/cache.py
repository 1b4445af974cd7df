"""The towers' states on disk: safetensors files named by a hash of the weights, the precision and the data, so a
second evaluation of the same checkpoint on the same data skips the towers."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file

from .distributed import rank_and_world
from .options import RetrievalOptions

# Config fields that change when a model is saved or loaded, not what it computes.
VOLATILE_CONFIG_FIELDS = ("_name_or_path", "transformers_version", "checkpoint_layout", "architectures", "torch_dtype")


def digest(*parts) -> str:
    """A short hash of `parts` (bytes, or anything with a str)."""
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update(part if isinstance(part, bytes) else str(part).encode())
        hashed.update(b"\0")
    return hashed.hexdigest()[:24]


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's raw bytes, any dtype (bf16 included)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def model_fingerprint(model) -> str:
    """A hash of the model's configuration and every weight: the cache's notion of "the same checkpoint". Hashing
    the weights themselves (not file dates) also covers a model evaluated in memory during fine-tuning."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in VOLATILE_CONFIG_FIELDS}
    hashed = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        hashed.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        hashed.update(tensor_bytes(tensor))
    return hashed.hexdigest()[:24]


def images_fingerprint(images: Sequence) -> str:
    """The pixels themselves, when the caller gives no key for its images (reads every image once more)."""
    hashed = hashlib.sha256()
    for index in range(len(images)):
        hashed.update(tensor_bytes(torch.as_tensor(images[index])))
    return hashed.hexdigest()[:24]


def tower_cache_files(
    model, images: Sequence, captions: Mapping[str, torch.Tensor], mine: range, options: RetrievalOptions
) -> tuple[str | None, str | None]:
    """(captions file, images file) of this rank's tower states in `options.cache_dir`; (None, None) without it."""
    if options.cache_dir is None:
        return None, None
    weights = model_fingerprint(model)
    precision = "bf16" if options.bf16 else "fp32"
    text_key = digest(weights, precision, tensor_bytes(captions["input_ids"]), tensor_bytes(captions["attention_mask"]))
    image_key = digest(weights, precision, options.data_key or images_fingerprint(images), len(images), mine)
    return (
        os.path.join(options.cache_dir, f"captions-{text_key}.safetensors"),
        os.path.join(options.cache_dir, f"images-{image_key}.safetensors"),
    )


def load_or_compute(
    path: str | None, compute: Callable[[], dict[str, torch.Tensor]], device: torch.device
) -> tuple[dict[str, torch.Tensor], bool]:
    """(tensors, whether they came from the cache file `path`): read it when present, else compute and write it.
    Written to a temporary name and renamed, so a crash or another rank writing the same file never leaves half a
    file behind."""
    if path is not None and os.path.isfile(path):
        return {name: tensor.to(device) for name, tensor in load_file(path).items()}, True
    tensors = compute()
    if path is not None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        partial = f"{path}.{rank_and_world()[0]}.{os.getpid()}.partial"
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}, partial)
        os.replace(partial, path)
    return tensors, False
