"""Classical CPU looks (no model weights): cartoon, sketch, watercolor, product cleanup.

Every style takes and returns an HxWx3 uint8 RGB array, is deterministic and scales its
kernel sizes with the image so that tiny and large inputs both work.
"""

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from workers.errors import EngineError

_REFERENCE_SIDE = 512  # kernel sizes below are tuned for a ~512 px image
_PAPER_SEED = 20240601


@dataclass(frozen=True)
class StyleInfo:
    name: str
    title: str
    description: str


def validate_rgb(image: object) -> None:
    """Raise EngineError unless `image` is an HxWx3 uint8 array of at least 1x1."""
    if not isinstance(image, np.ndarray):
        raise EngineError(f"expected an image array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise EngineError(f"expected an 8-bit image (uint8), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise EngineError(f"expected an RGB image of shape HxWx3, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise EngineError("the image is empty (0 pixels)")


def _scale(image: np.ndarray) -> float:
    return max(image.shape[:2]) / _REFERENCE_SIDE


def _odd(value: float, *, minimum: int = 3) -> int:
    """Nearest odd integer >= minimum, for OpenCV kernel sizes."""
    size = max(minimum, int(round(value)))
    return size if size % 2 else size + 1


def _paper(shape: tuple[int, int], *, amplitude: float) -> np.ndarray:
    """Deterministic soft paper grain around 1.0 (float32, HxW)."""
    rng = np.random.default_rng(_PAPER_SEED)
    grain = rng.standard_normal(shape).astype(np.float32)
    grain = cv2.GaussianBlur(grain, (0, 0), 0.8) + 0.5 * cv2.GaussianBlur(grain, (0, 0), 3.0)
    return 1.0 + amplitude * grain / max(float(grain.std()), 1e-6)


# --- cartoon -------------------------------------------------------------------------


def _kmeans_lab(lab: np.ndarray, *, k: int, iterations: int = 8) -> np.ndarray:
    """Quantise Lab pixels to k colours; deterministic (no random init)."""
    pixels = lab.reshape(-1, 3).astype(np.float32)
    step = max(1, pixels.shape[0] // 20_000)
    sample = pixels[::step]
    order = np.argsort(sample[:, 0], kind="stable")
    centers = sample[order[np.linspace(0, len(order) - 1, k).astype(int)]].copy()
    for _ in range(iterations):
        labels = _nearest(sample, centers)
        for i in range(k):
            members = sample[labels == i]
            if len(members):
                centers[i] = members.mean(axis=0)
    return centers[_nearest(pixels, centers)].reshape(lab.shape)


def _nearest(pixels: np.ndarray, centers: np.ndarray) -> np.ndarray:
    distances = (
        (pixels**2).sum(axis=1, keepdims=True) - 2.0 * pixels @ centers.T + (centers**2).sum(axis=1)
    )
    return distances.argmin(axis=1)


def _cartoon(image: np.ndarray) -> np.ndarray:
    scale = _scale(image)
    smooth = cv2.edgePreservingFilter(image, flags=cv2.RECURS_FILTER, sigma_s=60, sigma_r=0.4)
    for _ in range(2):
        smooth = cv2.bilateralFilter(smooth, _odd(9 * scale), 40, 7 * scale + 1)
    lab = cv2.cvtColor(smooth, cv2.COLOR_RGB2LAB).astype(np.float32)
    flat = cv2.cvtColor(_kmeans_lab(lab, k=10).round().astype(np.uint8), cv2.COLOR_LAB2RGB)
    gray = cv2.medianBlur(cv2.cvtColor(smooth, cv2.COLOR_RGB2GRAY), _odd(7 * scale))
    edges = cv2.adaptiveThreshold(
        gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, _odd(9 * scale), 4
    )
    edges = cv2.medianBlur(edges, _odd(3 * scale))
    return cv2.bitwise_and(flat, flat, mask=edges)


# --- sketch --------------------------------------------------------------------------


def _sketch(image: np.ndarray) -> np.ndarray:
    scale = _scale(image)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    blurred = cv2.GaussianBlur(255.0 - gray, (0, 0), max(1.0, 8.0 * scale))
    dodge = np.minimum(255.0, gray * 255.0 / np.maximum(255.0 - blurred, 1.0))
    shaded = 255.0 * (dodge / 255.0) ** 1.6  # darken strokes a little
    paper = _paper(gray.shape, amplitude=0.025)
    out = np.clip(shaded * paper, 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_GRAY2RGB)


# --- watercolor ----------------------------------------------------------------------


def _watercolor(image: np.ndarray) -> np.ndarray:
    scale = _scale(image)
    painted = cv2.stylization(image, sigma_s=60 * max(scale, 0.1), sigma_r=0.45)
    bleed = cv2.GaussianBlur(painted, (0, 0), max(0.6, 1.5 * scale))
    out = painted.astype(np.float32) * 0.6 + bleed.astype(np.float32) * 0.4
    out = 255.0 - (255.0 - out) * 0.85  # lighter, like pigment on white paper
    out *= _paper(image.shape[:2], amplitude=0.03)[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


# --- product -------------------------------------------------------------------------


def _white_balance(image: np.ndarray) -> np.ndarray:
    """Gray-world balance with limited per-channel gain so colours stay natural."""
    pixels = image.reshape(-1, 3).astype(np.float32)
    means = pixels.mean(axis=0)
    gains = np.clip(means.mean() / np.maximum(means, 1.0), 0.85, 1.2)
    gains = 1.0 + 0.6 * (gains - 1.0)
    return np.clip(image.astype(np.float32) * gains, 0, 255).astype(np.uint8)


def _product(image: np.ndarray) -> np.ndarray:
    scale = _scale(image)
    balanced = _white_balance(image)
    denoised = cv2.bilateralFilter(balanced, _odd(5 * scale), 20, 3)
    lab = cv2.cvtColor(denoised, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=1.6, tileGridSize=(8, 8))
    lab[..., 0] = clahe.apply(lab[..., 0])
    ab = lab[..., 1:].astype(np.float32) - 128.0
    lab[..., 1:] = np.clip(ab * 1.12 + 128.0, 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    blur = cv2.GaussianBlur(rgb, (0, 0), max(0.8, 1.2 * scale))
    return cv2.addWeighted(rgb, 1.5, blur, -0.5, 0)


# --- public API ----------------------------------------------------------------------

_STYLE_FUNCS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "cartoon": _cartoon,
    "product": _product,
    "sketch": _sketch,
    "watercolor": _watercolor,
}

STYLES: dict[str, StyleInfo] = {
    "cartoon": StyleInfo(
        "cartoon", "Cartoon", "Flat colour regions with bold dark outlines."
    ),
    "product": StyleInfo(
        "product",
        "Product photo",
        "Natural cleanup: white balance, local contrast, light denoise and sharpening.",
    ),
    "sketch": StyleInfo("sketch", "Pencil sketch", "Grayscale pencil drawing on light paper."),
    "watercolor": StyleInfo(
        "watercolor", "Watercolor", "Soft painted washes with gentle colour bleed."
    ),
}


def apply_style(image: np.ndarray, style: str, *, strength: float = 1.0) -> np.ndarray:
    """Restyle an HxWx3 uint8 RGB image; strength blends the effect with the original."""
    if style not in _STYLE_FUNCS:
        raise EngineError(f"unknown style {style!r}; choose one of: {', '.join(sorted(STYLES))}")
    validate_rgb(image)
    if not 0.0 <= strength <= 1.0:
        raise EngineError(f"strength must be between 0 and 1, got {strength}")
    image = np.ascontiguousarray(image)
    if strength == 0.0:
        return image.copy()
    styled = _STYLE_FUNCS[style](image)
    if strength == 1.0:
        return styled
    return cv2.addWeighted(styled, strength, image, 1.0 - strength, 0)
