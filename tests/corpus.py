"""A corpus of real photos and their variants, for the latent cache's false-hit measurement.

Photos: the ones scikit-image and scikit-learn ship, each first shrunk to at most 640 px (the
"uploaded photo"). SAME variants must be recognised as the same picture; DIFFERENT ones
(crops by a few %, flips, colour shifts, noise) and every other photo must not be.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image, ImageEnhance

SKIMAGE_RGB = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
SKIMAGE_GRAY = ("camera", "coins", "moon", "brick", "grass", "gravel", "cell")
MAX_SIDE = 640

Variant = Callable[[np.ndarray], np.ndarray]


@lru_cache(maxsize=1)
def photos() -> dict[str, np.ndarray]:
    from skimage import data

    found: dict[str, np.ndarray] = {}
    for name in SKIMAGE_RGB + SKIMAGE_GRAY:
        image = getattr(data, name)()
        found[name] = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]
    found["motorcycle"] = data.stereo_motorcycle()[0]
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:  # scikit-learn is a test dependency; without it the corpus is smaller
        pass
    else:
        sample = load_sample_images()
        for path, image in zip(sample.filenames, sample.images, strict=True):
            found[path.rsplit("/", 1)[-1].split(".")[0]] = image
    for name, image in found.items():
        pil = Image.fromarray(np.ascontiguousarray(image))
        pil.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        found[name] = np.asarray(pil)
    return found


def is_colour(image: np.ndarray) -> bool:
    return not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


# --- transformations ----------------------------------------------------------------------------

def save_as(image: np.ndarray, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **options)
    return buf.getvalue()


def round_trip(fmt: str, **options) -> Variant:
    return lambda image: np.asarray(Image.open(io.BytesIO(save_as(image, fmt, **options))).convert("RGB"))


def resized(dw: int, dh: int) -> Variant:
    def apply(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        return np.asarray(Image.fromarray(image).resize((w + dw, h + dh), Image.Resampling.LANCZOS))
    return apply


def cropped(fraction: float, side: str) -> Variant:
    def apply(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        dh, dw = max(1, round(fraction * h)), max(1, round(fraction * w))
        return {"left": image[:, dw:], "right": image[:, :-dw], "top": image[dh:], "bottom": image[:-dh],
                "all": image[dh // 2 or 1: h - (dh // 2 or 1), dw // 2 or 1: w - (dw // 2 or 1)]}[side]
    return apply


def shifted(levels: int) -> Variant:
    return lambda image: np.clip(image.astype(np.int16) + levels, 0, 255).astype(np.uint8)


def gained(r: float, g: float, b: float) -> Variant:
    return lambda image: np.clip(image * np.array([r, g, b]), 0, 255).round().astype(np.uint8)


def enhanced(kind: str, factor: float) -> Variant:
    enhancer = {"contrast": ImageEnhance.Contrast, "saturation": ImageEnhance.Color}[kind]
    return lambda image: np.asarray(enhancer(Image.fromarray(image)).enhance(factor))


def hue_rotated(degrees: float) -> Variant:
    def apply(image: np.ndarray) -> np.ndarray:
        hsv = np.asarray(Image.fromarray(image).convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(degrees * 256 / 360)) % 256
        return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    return apply


def noisy(sigma: float, seed: int = 0) -> Variant:
    def apply(image: np.ndarray) -> np.ndarray:
        noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
        return np.clip(image + noise, 0, 255).round().astype(np.uint8)
    return apply


def jpeg_with_and_without_exif(image: np.ndarray) -> tuple[bytes, bytes]:
    """A JPEG carrying camera EXIF, and the same JPEG re-saved with its tables kept and no EXIF."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Camera Maker", "Model 1"
    with_exif = save_as(image, "JPEG", quality=92, exif=exif.tobytes())
    buf = io.BytesIO()
    Image.open(io.BytesIO(with_exif)).save(buf, format="JPEG", quality="keep")  # same quantisation, no EXIF
    assert Image.open(io.BytesIO(with_exif)).getexif().get(0x010F) == "Camera Maker"
    assert Image.open(io.BytesIO(buf.getvalue())).getexif().get(0x010F) is None
    return with_exif, buf.getvalue()


def exif_stripped(image: np.ndarray) -> np.ndarray:
    """The pixels of the EXIF-stripped JPEG of ``image``."""
    return np.asarray(Image.open(io.BytesIO(jpeg_with_and_without_exif(image)[1])).convert("RGB"))


SAME: dict[str, Variant] = {
    "jpeg-q80": round_trip("JPEG", quality=80),
    "jpeg-q90": round_trip("JPEG", quality=90),
    "webp-default": round_trip("WEBP"),
    "webp-lossless": round_trip("WEBP", lossless=True),
    "png": round_trip("PNG"),
    "exif-stripped": exif_stripped,
    "resize-w-1": resized(-1, 0),
    "resize-h-1": resized(0, -1),
    "resize+1": resized(1, 1),
    "resize-1": resized(-1, -1),
    "jpeg-q80+resize-1": lambda image: round_trip("JPEG", quality=80)(resized(-1, -1)(image)),
}

DIFFERENT: dict[str, Variant] = {
    "crop-2%-left": cropped(0.02, "left"),
    "crop-3%-top": cropped(0.03, "top"),
    "crop-5%-right": cropped(0.05, "right"),
    "crop-2%-all-sides": cropped(0.02, "all"),
    "flip-lr": lambda image: np.ascontiguousarray(image[:, ::-1]),
    "flip-ud": lambda image: np.ascontiguousarray(image[::-1]),
    "brighter+8": shifted(8),
    "darker-8": shifted(-8),
    "warmer-6%": gained(1.06, 1.0, 0.94),
    "cooler-6%": gained(0.94, 1.0, 1.06),
    "contrast-0.85": enhanced("contrast", 0.85),
    "contrast-1.15": enhanced("contrast", 1.15),
    "noise-sigma16": noisy(16),
    "noise-sigma24": noisy(24),
}

# colour-only edits leave a grey photo unchanged, so they apply to colour photos only
DIFFERENT_COLOUR: dict[str, Variant] = {
    "hue+10": hue_rotated(10),
    "hue-15": hue_rotated(-15),
    "saturation-0.75": enhanced("saturation", 0.75),
    "saturation-1.3": enhanced("saturation", 1.3),
    "greyscale": enhanced("saturation", 0.0),
}
