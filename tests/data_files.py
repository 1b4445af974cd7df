"""Writers for small data files in every supported format (the tests' own data; nothing is downloaded)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from PIL import Image

PALETTE = [
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (128, 64, 0),
    (0, 64, 128),
]


def color_image(index: int, size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, PALETTE[index % len(PALETTE)])


def jpeg_bytes(image: Image.Image, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def color_index(image: Image.Image) -> int:
    """Which palette colour a decoded image is (images are saved losslessly as PNG)."""
    pixel = tuple(int(v) for v in np.asarray(image.convert("RGB"))[0, 0])
    return PALETTE.index(pixel)


def write_images(folder, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"img{i}.png"
        color_image(i).save(folder / name)
        names.append(name)
    return names


def write_karpathy(path, image_folder, splits: list[str]) -> list[tuple[int, str, str]]:
    """One image per split entry, two sentences each; returns (color, caption, split)."""
    names = write_images(image_folder, len(splits))
    images, pairs = [], []
    for i, (name, split) in enumerate(zip(names, splits, strict=True)):
        sentences = [{"raw": f"caption {i} a"}, {"raw": f"caption {i} b"}]
        images.append(
            {"filepath": image_folder.name, "filename": name, "split": split, "cocoid": 100 + i, "sentences": sentences}
        )
        pairs += [(i, s["raw"], split) for s in sentences]
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return pairs


def write_arrow(path, start: int, count: int, bad_rows=()) -> list[tuple[int, str]]:
    import pyarrow as pa

    images, captions, ids = [], [], []
    pairs = []
    for i in range(start, start + count):
        images.append(jpeg_bytes(color_image(i)))
        if i in bad_rows:
            captions.append(None)
        else:
            captions.append([f"arrow {i} x", f"arrow {i} y"])
            pairs += [(i, f"arrow {i} x"), (i, f"arrow {i} y")]
        ids.append(f"id{i}")
    table = pa.table({"image": images, "caption": captions, "image_id": ids, "split": ["train"] * count})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return pairs


def write_tar(
    path, start: int, count: int, caption_as_json=False, extra: dict | None = None, caption_of=None
) -> list[tuple[int, str]]:
    pairs = []
    with tarfile.open(path, "w") as tar:

        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i in range(start, start + count):
            key = f"sample{i:05d}"
            add(f"{key}.png", jpeg_bytes(color_image(i)))
            caption = caption_of(i) if caption_of else f"tar {i}"
            add(
                f"{key}.json" if caption_as_json else f"{key}.txt",
                json.dumps({"caption": caption}).encode() if caption_as_json else caption.encode(),
            )
            pairs.append((i, caption))
        for name, data in (extra or {}).items():
            add(name, data)
    return pairs


def write_jsonl(path, image_folder, count: int, image_field="image", caption_field="caption") -> list[tuple[int, str]]:
    names = write_images(image_folder, count)
    lines, pairs = [], []
    for i, name in enumerate(names):
        lines.append(json.dumps({image_field: f"{image_folder.name}/{name}", caption_field: f"jsonl {i}"}))
        pairs.append((i, f"jsonl {i}"))
    path.write_text("\n".join(lines) + "\n")
    return pairs
