"""The image tower's states of a folder of images, kept on disk so that a second search over the folder skips the
tower.

One cache per (folder, checkpoint): `<image_dir>/.bridgetower_cache/<checkpoint key>/` (or `<cache_dir>/<key>/`),
the key covering the checkpoint's weights files (size, mtime), image size, transform and precision. Inside,
`states.safetensors` holds the states (one tensor per fed layer, one row per image) and `index.json` each file's row
and (size, mtime) stamp, and the files that could not be read. An unchanged file is read from the cache; a changed
or added one is embedded again; a removed one is dropped; nothing else is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CACHE_DIR_NAME = ".bridgetower_cache"


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


@dataclass
class FolderStates:
    """The readable images of a folder (paths relative to it) with their states, and the files skipped."""

    paths: list[str]
    states: tuple[torch.Tensor, ...]  # one (images, tokens, hidden) tensor per fed layer; () without images
    skipped: list[dict]  # {"path", "reason"}
    embedded: int  # images run through the image tower this time (the others came from the cache)


# `embed(paths)` -> (the paths it could read, their states, [(path, reason)] for the others)
Embed = Callable[[list[str]], tuple[list[str], tuple[torch.Tensor, ...] | None, list[tuple[str, str]]]]


class ImageStateCache:
    """The states of the images under `image_dir`, from the cache folder `where` when a file is unchanged."""

    def __init__(self, image_dir: str, where: str, num_layers: int):
        self.image_dir, self.where, self.num_layers = image_dir, where, num_layers
        self.index_file = os.path.join(where, "index.json")
        self.states_file = os.path.join(where, "states.safetensors")

    def _read(self) -> tuple[dict, dict]:
        if os.path.isfile(self.index_file) and os.path.isfile(self.states_file):
            with open(self.index_file) as f:
                return json.load(f), load_file(self.states_file)
        return {}, {}

    def _write(self, paths: list[str], stamps: dict, states: tuple[torch.Tensor, ...], skipped: list[dict]) -> None:
        os.makedirs(self.where, exist_ok=True)
        index = {"files": {p: {"row": row, "stamp": stamps[p]} for row, p in enumerate(paths)}, "skipped": skipped}
        if states:
            save_file({f"layer{k}": s.contiguous() for k, s in enumerate(states)}, self.states_file)
        with open(self.index_file, "w") as f:
            json.dump(index, f)

    def states(self, embed: Embed, batch_size: int, progress: bool = True) -> FolderStates:
        """Every readable image's states: cached ones where the file's stamp is unchanged, the rest through `embed`
        in batches of `batch_size`; the cache rewritten when anything changed."""
        index, cached_states = self._read()
        cached_files = index.get("files", {})
        stamps = {}
        for path in list_images(self.image_dir):
            stat = os.stat(os.path.join(self.image_dir, path))
            stamps[path] = [stat.st_size, stat.st_mtime_ns]
        keep = [p for p in stamps if p in cached_files and cached_files[p]["stamp"] == stamps[p]]
        skipped = [s for s in index.get("skipped", []) if stamps.get(s["path"]) == s["stamp"]]
        known_bad = {s["path"] for s in skipped}
        todo = [p for p in stamps if p not in keep and p not in known_bad]

        parts = []
        if keep:
            rows = torch.tensor([cached_files[p]["row"] for p in keep])
            parts.append(tuple(cached_states[f"layer{k}"].index_select(0, rows) for k in range(self.num_layers)))
        new_paths = []
        bar = tqdm(total=len(todo), desc="embedding images", unit="img", disable=not progress or not todo)
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            names, states, failures = embed(batch)
            skipped += [{"path": path, "reason": reason, "stamp": stamps[path]} for path, reason in failures]
            if names:
                parts.append(states)
                new_paths += names
            bar.update(len(batch))
        bar.close()

        paths = keep + new_paths
        states = tuple(torch.cat([part[k] for part in parts]) for k in range(self.num_layers)) if parts else ()
        if todo or len(keep) != len(cached_files):
            self._write(paths, stamps, states, skipped)
        skipped = [{"path": s["path"], "reason": s["reason"]} for s in skipped]
        return FolderStates(paths, states, skipped, len(new_paths))
