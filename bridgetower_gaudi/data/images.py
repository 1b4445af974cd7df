"""Image decoding and transforms on PIL / numpy / torch (torchvision is optional: PyPI's build does not import beside
every torch build, so the few transforms BridgeTower needs are written here)."""

from __future__ import annotations

import io
import math
import os
import random

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFile, ImageOps

from .records import BadRecord

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def decode_image(image, name: str) -> Image.Image:
    """bytes / path / PIL image -> fully loaded RGB PIL image; BadRecord when it cannot be used."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, (str, os.PathLike)):
        if not os.path.exists(image):
            raise BadRecord("missing_image", name, str(image))
        if os.path.getsize(image) == 0:
            raise BadRecord("empty_image", name)
        source = image
    elif isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) == 0:
            raise BadRecord("empty_image", name)
        source = io.BytesIO(bytes(image))
    elif image is None:
        raise BadRecord("missing_image", name, "no image in the record")
    else:
        raise BadRecord("bad_row", name, f"image field of type {type(image).__name__}")
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image
    try:
        with Image.open(source) as opened:
            opened.load()
            return to_rgb(opened)
    except OSError as error:
        message = str(error).lower()
        reason = "truncated_image" if "truncated" in message or "broken data stream" in message else "corrupt_image"
        raise BadRecord(reason, name, str(error)) from None
    except (ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadRecord("corrupt_image", name, str(error)) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16-bit and float images are rescaled to 8 bits, transparency goes over white."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def resize_shortest_edge(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    return image.resize(new, Image.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def random_resized_crop(
    image: Image.Image, size: int, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), rng=random
) -> Image.Image:
    """Crop a random area fraction `scale` and aspect `ratio` of the image, resized to size x size (as torchvision)."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
    return center_crop(resize_shortest_edge(image, size), size)


def _shear(axis):
    def apply(img, v):
        matrix = (1, v, 0, 0, 1, 0) if axis == "x" else (1, 0, 0, v, 1, 0)
        return img.transform(img.size, Image.AFFINE, matrix, fillcolor=(128, 128, 128))

    return apply


def _translate(axis):
    def apply(img, v):
        shift = v * (img.size[0] if axis == "x" else img.size[1])
        matrix = (1, 0, shift, 0, 1, 0) if axis == "x" else (1, 0, 0, 0, 1, shift)
        return img.transform(img.size, Image.AFFINE, matrix, fillcolor=(128, 128, 128))

    return apply


# RandAugment (Cubuk et al. 2020) ops: name -> (function(img, value), value at magnitude 10, signed)
_RANDAUGMENT_OPS = {
    "identity": (lambda img, v: img, 0.0, False),
    "autocontrast": (lambda img, v: ImageOps.autocontrast(img), 0.0, False),
    "equalize": (lambda img, v: ImageOps.equalize(img), 0.0, False),
    "rotate": (lambda img, v: img.rotate(v, fillcolor=(128, 128, 128)), 30.0, True),
    "solarize": (lambda img, v: ImageOps.solarize(img, 256 - v), 256.0, False),
    "color": (lambda img, v: ImageEnhance.Color(img).enhance(1 + v), 0.9, True),
    "posterize": (lambda img, v: ImageOps.posterize(img, max(1, 8 - int(v))), 4.0, False),
    "contrast": (lambda img, v: ImageEnhance.Contrast(img).enhance(1 + v), 0.9, True),
    "brightness": (lambda img, v: ImageEnhance.Brightness(img).enhance(1 + v), 0.9, True),
    "sharpness": (lambda img, v: ImageEnhance.Sharpness(img).enhance(1 + v), 0.9, True),
    "shear_x": (_shear("x"), 0.3, True),
    "shear_y": (_shear("y"), 0.3, True),
    "translate_x": (_translate("x"), 0.45, True),
    "translate_y": (_translate("y"), 0.45, True),
}


def rand_augment(image: Image.Image, num_ops: int = 2, magnitude: int = 9, rng=random) -> Image.Image:
    for name in rng.sample(sorted(_RANDAUGMENT_OPS), num_ops):
        op, max_value, signed = _RANDAUGMENT_OPS[name]
        value = max_value * magnitude / 10
        if signed and rng.random() < 0.5:
            value = -value
        image = op(image, value)
    return image


def to_normalized_tensor(image: Image.Image, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return (tensor - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


class ImageTransform:
    """`pretrain`: shortest-edge bicubic resize + center crop (the paper's pre-training); `finetune`: random resized
    crop (0.5-1) + horizontal flip + RandAugment; `flip=False` for VQA, where left / right matter."""

    def __init__(self, image_size: int = 288, mode: str = "pretrain", flip: bool = True, seed: int | None = None):
        if mode not in ("pretrain", "finetune"):
            raise ValueError(f"image transform mode {mode!r}: use 'pretrain' or 'finetune'.")
        self.image_size, self.mode, self.flip = image_size, mode, flip
        # Without a seed the global `random` is used: DataLoader reseeds it in every worker.
        self.rng = random.Random(seed) if seed is not None else random

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.mode == "pretrain":
            image = center_crop(resize_shortest_edge(image, self.image_size), self.image_size)
        else:
            image = random_resized_crop(image, self.image_size, rng=self.rng)
            if self.flip and self.rng.random() < 0.5:
                image = ImageOps.mirror(image)
            image = rand_augment(image, rng=self.rng)
        return to_normalized_tensor(image)
