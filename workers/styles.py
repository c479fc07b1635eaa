"""Classical CPU looks (no model weights): cartoon, sketch, watercolor and product cleanup.

Every style takes and returns an HxWx3 uint8 RGB array and is deterministic. Kernel sizes
scale with the image so tiny and large inputs look alike; the costly filters run at a
capped working size so large images stay fast.
"""

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from workers.errors import EngineError

_REFERENCE_SIDE = 512  # kernel sizes below are tuned for a ~512 px image
_WORK_SIDE = 768  # longest side at which the slow smoothing filters run
_SEED = 20240601  # fixed seed for paper grain and pigment bleed
_GRAPHITE = 35.0  # darkest pencil tone


@dataclass(frozen=True)
class StyleInfo:
    name: str
    title: str
    description: str


def validate_rgb(image: object) -> None:
    """Raise EngineError unless `image` is a non-empty HxWx3 uint8 array."""
    if not isinstance(image, np.ndarray):
        raise EngineError(f"expected an image array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise EngineError(f"expected an 8-bit image (uint8), got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise EngineError(f"expected an RGB image of shape HxWx3, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise EngineError("the image is empty (0 pixels)")


# --- helpers -------------------------------------------------------------------------


def _scale(image: np.ndarray) -> float:
    return max(image.shape[:2]) / _REFERENCE_SIDE


def _odd(value: float, *, minimum: int = 3) -> int:
    """Nearest odd integer >= minimum, for OpenCV kernel sizes."""
    size = max(minimum, int(round(value)))
    return size if size % 2 else size + 1


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height): area averaging to shrink, bilinear to grow."""
    if image.shape[1::-1] == size:
        return image
    shrink = size[0] < image.shape[1]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _to_work_size(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    factor = min(1.0, _WORK_SIDE / max(height, width))
    return _resize(image, (max(1, round(width * factor)), max(1, round(height * factor))))


def _noise(shape: tuple[int, int], *, sigma: float, seed: int) -> np.ndarray:
    """Deterministic smooth noise with unit std (float32, HxW)."""
    noise = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _paper(shape: tuple[int, int], *, amplitude: float, grain: float) -> np.ndarray:
    """Multiplicative paper texture around 1.0: fine grain plus a softer mottle."""
    fine = _noise(shape, sigma=grain, seed=_SEED)
    mottle = _noise(shape, sigma=4 * grain, seed=_SEED + 1)
    return 1.0 + amplitude * (0.6 * fine + 0.4 * mottle)


_VALUES = np.arange(256, dtype=np.float32)


def _lut(tables: list[np.ndarray]) -> np.ndarray:
    """Per-channel 256-entry lookup table for cv2.LUT from float curves over _VALUES."""
    return np.clip(np.stack(tables, axis=-1), 0, 255).astype(np.uint8).reshape(256, 1, -1)


def _wide_blur(gray: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; large sigmas are done on a shrunken copy (same look, far cheaper)."""
    factor = max(1.0, sigma / 4.0)
    height, width = gray.shape
    small = _resize(gray, (max(1, round(width / factor)), max(1, round(height / factor))))
    return _resize(cv2.GaussianBlur(small, (0, 0), sigma / factor), (width, height))


# --- cartoon -------------------------------------------------------------------------


def _flatten(image: np.ndarray) -> np.ndarray:
    """Edge-preserving smoothing at working size, returned at full size."""
    work = _to_work_size(image)
    scale = _scale(work)
    smooth = cv2.edgePreservingFilter(work, flags=cv2.RECURS_FILTER, sigma_s=60, sigma_r=0.4)
    smooth = cv2.bilateralFilter(smooth, min(_odd(9 * scale), 9), 40, 7 * scale + 1)
    return _resize(smooth, image.shape[1::-1])


def _posterise_lut(*, levels: int = 6, chroma_step: float = 6.0) -> np.ndarray:
    """Lab lookup: few lightness bands; chroma boosted x1.2 and coarsely stepped."""
    band = 256.0 / levels
    lightness = (np.floor(_VALUES / band) + 0.5) * band
    chroma = np.round((_VALUES - 128.0) * 1.2 / chroma_step) * chroma_step + 128.0
    return _lut([lightness, chroma, chroma])


_POSTERISE_LUT = _posterise_lut()


def _posterise(smooth: np.ndarray) -> np.ndarray:
    """Cel shading that keeps hue (so skin never turns gray)."""
    lab = cv2.LUT(cv2.cvtColor(smooth, cv2.COLOR_RGB2LAB), _POSTERISE_LUT)
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def _ink_lines(image: np.ndarray) -> np.ndarray:
    """Binary mask, 0 on bold dark outlines, 255 elsewhere."""
    scale = _scale(image)
    gray = cv2.medianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), _odd(7 * scale))
    mask = cv2.adaptiveThreshold(
        gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, _odd(9 * scale), 9
    )
    return cv2.medianBlur(mask, _odd(3 * scale))


def _cartoon(image: np.ndarray) -> np.ndarray:
    flat = cv2.medianBlur(_posterise(_flatten(image)), _odd(5 * _scale(image)))
    return cv2.bitwise_and(flat, flat, mask=_ink_lines(image))


# --- sketch --------------------------------------------------------------------------


def _sketch(image: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    blurred = _wide_blur(255.0 - gray, max(1.0, 8.0 * _scale(image)))
    dodge = np.minimum(1.0, gray / np.maximum(255.0 - blurred, 1.0))
    shaded = _GRAPHITE + (255.0 - _GRAPHITE) * dodge**1.6  # firmer strokes, graphite not ink
    paper = _paper(gray.shape, amplitude=0.025, grain=0.8)
    return cv2.cvtColor(np.clip(shaded * paper, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)


# --- watercolor ----------------------------------------------------------------------


def _washes(work: np.ndarray) -> np.ndarray:
    """Flat colour washes: mean-shift segmentation softened by recursive filtering."""
    scale = _scale(work)
    washes = cv2.pyrMeanShiftFiltering(work, float(np.clip(4 * scale, 2, 4)), 30)
    return cv2.edgePreservingFilter(
        washes, flags=cv2.RECURS_FILTER, sigma_s=max(1.0, 30 * scale), sigma_r=0.3
    )


def _bleed(image: np.ndarray, *, reach: float) -> np.ndarray:
    """Wet-in-wet colour bleed: displace pixels along a smooth deterministic field."""
    height, width = image.shape[:2]
    sigma = 8 * _scale(image) + 1
    dx = _noise((height, width), sigma=sigma, seed=_SEED + 2) * reach
    dy = _noise((height, width), sigma=sigma, seed=_SEED + 3) * reach
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(image, xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _pigment_edges(image: np.ndarray) -> np.ndarray:
    """Darkening factor (HxW float32, 0.7..1) where pigment pools at wash borders."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gray = cv2.GaussianBlur(gray, (0, 0), _scale(image) + 0.5)
    magnitude = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    magnitude /= float(np.percentile(magnitude, 98)) + 1e-6
    return 1.0 - 0.3 * np.clip(magnitude, 0.0, 1.0)


def _watercolor(image: np.ndarray) -> np.ndarray:
    work = _to_work_size(image)
    painted = _bleed(_washes(work), reach=1.5 * _scale(work))
    painted = painted.astype(np.float32) * _pigment_edges(painted)[..., None]
    painted = _resize(np.clip(painted, 0, 255).astype(np.uint8), image.shape[1::-1])
    lighter = 255.0 - (255.0 - painted.astype(np.float32)) * 0.88  # pigment on white paper
    lighter *= _paper(image.shape[:2], amplitude=0.03, grain=1.2)[..., None]
    return np.clip(lighter, 0, 255).astype(np.uint8)


# --- product -------------------------------------------------------------------------


def _stats_sample(image: np.ndarray) -> np.ndarray:
    """Strided sample with longest side <= 512 px, for cheap global statistics."""
    step = -(-max(image.shape[:2]) // _REFERENCE_SIDE)
    return np.ascontiguousarray(image[::step, ::step])


_SATURATE_LUT = _lut([_VALUES, *[(_VALUES - 128.0) * 1.08 + 128.0] * 2])  # Lab chroma x1.08


def _white_balance(image: np.ndarray) -> np.ndarray:
    """Half-correct the colour cast seen in bright near-neutral pixels (gain within ±6%)."""
    sample = _stats_sample(image)
    lab = cv2.cvtColor(sample, cv2.COLOR_RGB2LAB).astype(np.float32)
    lightness = lab[..., 0]
    chroma = np.hypot(lab[..., 1] - 128.0, lab[..., 2] - 128.0)
    neutral = (lightness >= np.percentile(lightness, 70)) & (chroma < 25) & (lightness < 250)
    if neutral.mean() < 0.01:
        return image
    means = sample[neutral].astype(np.float32).mean(axis=0)
    gains = np.clip(1.0 + 0.5 * (means.mean() / np.maximum(means, 1.0) - 1.0), 0.94, 1.06)
    return cv2.LUT(image, _lut([_VALUES * gain for gain in gains]))


def _auto_levels(lightness: np.ndarray) -> np.ndarray:
    """Stretch 0.5-99.5 percentiles toward full range, at most x1.25, never crushing."""
    low, high = np.percentile(_stats_sample(lightness), [0.5, 99.5])
    low, high = min(float(low), 30.0), max(float(high), 225.0)
    gain = min(255.0 / max(high - low, 1.0), 1.25)
    return cv2.LUT(lightness, _lut([(_VALUES - low) * gain]))


def _product(image: np.ndarray) -> np.ndarray:
    denoised = cv2.bilateralFilter(_white_balance(image), 5, 20, 3)
    lab = cv2.cvtColor(denoised, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=1.2, tileGridSize=(4, 4))
    lab[..., 0] = clahe.apply(_auto_levels(np.ascontiguousarray(lab[..., 0])))
    rgb = cv2.cvtColor(cv2.LUT(lab, _SATURATE_LUT), cv2.COLOR_LAB2RGB)
    return cv2.addWeighted(rgb, 1.4, cv2.GaussianBlur(rgb, (0, 0), 1.0), -0.4, 0)


# --- public API ----------------------------------------------------------------------

_STYLE_FUNCS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "cartoon": _cartoon,
    "product": _product,
    "sketch": _sketch,
    "watercolor": _watercolor,
}

STYLES: dict[str, StyleInfo] = {
    "cartoon": StyleInfo("cartoon", "Cartoon", "Flat cel-shaded colour with bold dark outlines."),
    "product": StyleInfo(
        "product",
        "Product photo",
        "Natural cleanup: gentle white balance, contrast, denoise, sharpening and colour.",
    ),
    "sketch": StyleInfo("sketch", "Pencil sketch", "Grayscale pencil drawing on light paper."),
    "watercolor": StyleInfo(
        "watercolor", "Watercolor", "Soft painted washes with colour bleed on textured paper."
    ),
}


def apply_style(image: np.ndarray, style: str, *, strength: float = 1.0) -> np.ndarray:
    """Restyle an HxWx3 uint8 RGB image; strength in [0, 1] blends the effect with the original."""
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
