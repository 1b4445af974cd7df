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


def decode_image(image, name: str, draft_size: int | None = None) -> Image.Image:
    """bytes / path / PIL image -> fully loaded RGB PIL image; BadRecord when it cannot be used.

    `draft_size` (a transform's `draft_size`): a JPEG is decoded at the smallest of 1/8, 1/4, 1/2 or full scale whose
    sides are both at least that (libjpeg scales in the DCT, Pillow's draft mode), which the resize then brings to the
    final size. Decode + transform at 288 px measured 1.6-1.8x faster for 1280 x 960 photos and 2.4x for 2048 x 1536;
    COCO-sized 640 x 480 ones decode at full scale, unchanged. Pixels differ from a full decode by under 1/255 on
    average and 8/255 at most (tests/test_image_draft.py)."""
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
            if draft_size is not None and opened.format == "JPEG":
                opened.draft("RGB", (draft_size, draft_size))
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


# The two augmentation policies of the official fine-tuning transforms, written on PIL because torchvision (and
# timm, which needs it) does not import beside every torch build this package supports.
def _affine(image: Image.Image, matrix, fill=None, resample=Image.NEAREST) -> Image.Image:
    return image.transform(image.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def _solarize_add(image: Image.Image, addition: float, threshold: int = 128) -> Image.Image:
    shifted = np.clip(np.asarray(image, dtype=np.int32) + int(addition), 0, 255).astype(np.uint8)
    return ImageOps.solarize(Image.fromarray(shifted), threshold)


# randaug.py's RandAugment list: (op(image, value, sign), min, max); value = m / 30 * (max - min) + min.
_RANDAUG_OPS = (
    (lambda img, v, s: ImageOps.autocontrast(img), 0, 1),
    (lambda img, v, s: ImageOps.equalize(img), 0, 1),
    (lambda img, v, s: img.rotate(s * v), 0, 30),
    (lambda img, v, s: ImageOps.posterize(img, max(1, int(v))), 0, 4),
    (lambda img, v, s: ImageOps.solarize(img, v), 0, 256),
    (lambda img, v, s: _solarize_add(img, v), 0, 110),
    (lambda img, v, s: ImageEnhance.Color(img).enhance(v), 0.1, 1.9),
    (lambda img, v, s: ImageEnhance.Contrast(img).enhance(v), 0.1, 1.9),
    (lambda img, v, s: ImageEnhance.Brightness(img).enhance(v), 0.1, 1.9),
    (lambda img, v, s: ImageEnhance.Sharpness(img).enhance(v), 0.1, 1.9),
    (lambda img, v, s: _affine(img, (1, s * v, 0, 0, 1, 0)), 0.0, 0.3),
    (lambda img, v, s: _affine(img, (1, 0, 0, s * v, 1, 0)), 0.0, 0.3),
    (lambda img, v, s: _affine(img, (1, 0, s * v, 0, 1, 0)), 0.0, 100),
    (lambda img, v, s: _affine(img, (1, 0, 0, 0, 1, s * v)), 0.0, 100),
)


def rand_augment(image: Image.Image, num_ops: int = 2, magnitude: int = 7, rng=random) -> Image.Image:
    """The official `RandAugment(n, m)` (src/transforms/randaug.py): `num_ops` ops drawn with replacement from 14,
    always applied, strength `magnitude` of 30; geometric ops take a random sign."""
    for op, low, high in rng.choices(_RANDAUG_OPS, k=num_ops):
        value = magnitude / 30 * (high - low) + low
        image = op(image, value, -1 if rng.random() > 0.5 else 1)
    return image


_GREY = (128, 128, 128)
# BLIP's RandomAugment ops as the official blip_randaug* transforms list them: op(image, level / 10, sign). Its
# geometric ops are cv2.warpAffine with bilinear interpolation (randaugment.py), where randaug.py's PIL ops above
# keep PIL's default, nearest.
_RANDOM_AUGMENT_OPS = {
    "Identity": lambda img, f, s: img,
    "AutoContrast": lambda img, f, s: ImageOps.autocontrast(img),
    "Equalize": lambda img, f, s: ImageOps.equalize(img),
    "Brightness": lambda img, f, s: ImageEnhance.Brightness(img).enhance(f * 1.8 + 0.1),
    "Sharpness": lambda img, f, s: ImageEnhance.Sharpness(img).enhance(f * 1.8 + 0.1),
    "ShearX": lambda img, f, s: _affine(img, (1, s * f * 0.3, 0, 0, 1, 0), _GREY, Image.BILINEAR),
    "ShearY": lambda img, f, s: _affine(img, (1, 0, 0, s * f * 0.3, 1, 0), _GREY, Image.BILINEAR),
    "TranslateX": lambda img, f, s: _affine(img, (1, 0, s * f * 10, 0, 1, 0), _GREY, Image.BILINEAR),
    "TranslateY": lambda img, f, s: _affine(img, (1, 0, 0, 0, 1, s * f * 10), _GREY, Image.BILINEAR),
    "Rotate": lambda img, f, s: img.rotate(s * f * 30, resample=Image.BILINEAR, fillcolor=_GREY),
}


def random_augment(image: Image.Image, num_ops: int = 2, level: int = 5, probability: float = 0.5, rng=random):
    """The official VQA policy, BLIP's `RandomAugment(2, 5)`: `num_ops` of its 10 ops drawn with replacement, each
    applied with `probability`, at `level` of 10 (at 5, brightness and sharpness are identities)."""
    for name in rng.choices(sorted(_RANDOM_AUGMENT_OPS), k=num_ops):
        sign = -1 if rng.random() > 0.5 else 1
        if rng.random() <= probability:
            image = _RANDOM_AUGMENT_OPS[name](image, level / 10, sign)
    return image


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8: what crosses the data loader (a quarter of float32's bytes); `normalize_pixels` finishes it
    on the device."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def normalize_pixels(pixel_values: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """uint8 images (from the loader) -> float32 normalised as `to_normalized_tensor` does, where they are (on the
    device, inside the step); float images are returned as they are (already normalised). A dtype check: no sync."""
    if pixel_values.dtype != torch.uint8:
        return pixel_values
    shape = (3, 1, 1)
    mean = torch.tensor(mean, dtype=torch.float32, device=pixel_values.device).view(shape)
    std = torch.tensor(std, dtype=torch.float32, device=pixel_values.device).view(shape)
    return (pixel_values.float() / 255.0 - mean) / std


def to_normalized_tensor(image: Image.Image, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return (tensor - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


# The official transform keys (src/transforms) and what evaluation uses after each.
TRANSFORMS = {
    "clip": "resize the shortest edge + centre crop (pre-training, and its evaluation)",
    "blip": "squash to size x size (fine-tuning evaluation and inference)",
    "blip_randaug_wc": "random-resized-crop 0.5-1 + flip + RandAugment(2, 7) (fine-tuning: retrieval, SNLI-VE, NLVR2)",
    "blip_randaug_wohf": "random-resized-crop 0.5-1 + RandomAugment(2, 5), no flip (VQA: left / right matter)",
}
TRANSFORM_ALIASES = {"pretrain": "clip", "finetune": "blip_randaug_wc", "finetune_vqa": "blip_randaug_wohf"}


def evaluation_transform(training_transform: str) -> str:
    """The transform that evaluates a model trained with `training_transform`: `clip` after `clip`, else `blip`."""
    name = TRANSFORM_ALIASES.get(training_transform, training_transform)
    return "clip" if name == "clip" else "blip"


class ImageTransform:
    """One image pipeline for training, evaluation and inference (`BridgeTowerProcessor` calls it too), by the
    official transform key (see `TRANSFORMS`; "pretrain" / "finetune" / "finetune_vqa" are aliases)."""

    def __init__(self, image_size: int = 288, mode: str = "clip", seed: int | None = None, uint8: bool = False):
        name = TRANSFORM_ALIASES.get(mode, mode)
        if name not in TRANSFORMS:
            raise ValueError(
                f"image transform {mode!r}: choose one of {sorted(TRANSFORMS)} (or {sorted(TRANSFORM_ALIASES)})."
            )
        self.image_size, self.mode = image_size, name
        # uint8: the data loaders' output, normalised on the device by the model (`normalize_pixels`); else float32
        # normalised here (the processor, inference).
        self.uint8 = uint8
        # What decode_image may reduce a JPEG to: the resize of clip / blip needs both sides >= image_size; the random
        # crops of the training transforms can take a small area of the image and enlarge it, so they get every pixel.
        self.draft_size = image_size if name in ("clip", "blip") else None
        # Without a seed the global `random` is used: DataLoader reseeds it in every worker.
        self.rng = random.Random(seed) if seed is not None else random

    def __call__(self, image: Image.Image) -> torch.Tensor:
        size, rng = self.image_size, self.rng
        if self.mode == "clip":
            image = center_crop(resize_shortest_edge(image, size), size)
        elif self.mode == "blip":
            image = image.resize((size, size), Image.BICUBIC)
        else:
            image = random_resized_crop(image, size, rng=rng)
            if self.mode == "blip_randaug_wc":
                if rng.random() < 0.5:
                    image = ImageOps.mirror(image)
                image = rand_augment(image, rng=rng)
            else:
                image = random_augment(image, rng=rng)
        return to_uint8_tensor(image) if self.uint8 else to_normalized_tensor(image)
