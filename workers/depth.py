"""Depth estimation for depth control maps: a transformers depth model (Depth Anything) loaded
from a local folder (safetensors only), with its preprocessing done here in torch (resize to a
multiple of the patch size, keeping the aspect ratio; ImageNet normalisation) — no image
processor package, no hub, no torchvision.

Depth-Anything-V2-Small is Apache-2.0; its Base and Large siblings are non-commercial.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workers.errors import EngineError, ModelLoadError
from workers.library import read_json

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DepthEstimator:
    def __init__(self, model: torch.nn.Module, *, size: int, multiple: int, mean: tuple[float, ...],
                 std: tuple[float, ...], device: str, name: str = "") -> None:
        self._model = model.eval()
        self.size, self.multiple, self.device, self.name = size, multiple, device, name
        self._mean = torch.tensor(mean).view(1, 3, 1, 1)
        self._std = torch.tensor(std).view(1, 3, 1, 1)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu", name: str = "") -> DepthEstimator:
        from transformers import AutoModelForDepthEstimation

        folder = Path(path)
        try:
            model = AutoModelForDepthEstimation.from_pretrained(folder, use_safetensors=True).to(device)
        except Exception as e:  # noqa: BLE001 — any failure means the folder is unusable
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"could not load the depth model at {folder}: {reason}. Put a Depth Anything "
                                 "folder (config.json + model.safetensors) under depth/ in the model library") from e
        pre = read_json(folder / "preprocessor_config.json") or {}
        size = pre.get("size", {})
        side = int(size.get("height") or size.get("shortest_edge") or 518) if isinstance(size, dict) else int(size)
        patch = int(getattr(getattr(model.config, "backbone_config", None), "patch_size", 14) or 14)
        return cls(model, size=side, multiple=int(pre.get("ensure_multiple_of", patch)),
                   mean=tuple(pre.get("image_mean", IMAGENET_MEAN)), std=tuple(pre.get("image_std", IMAGENET_STD)),
                   device=device, name=name or folder.name)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """DPT's resize: scale as little as possible towards ``size``, keep the aspect ratio, then
        round each side to the patch multiple."""
        scale_h, scale_w = self.size / height, self.size / width
        scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
        def fit(side: float) -> int:
            return max(self.multiple, int(round(side / self.multiple)) * self.multiple)
        return fit(height * scale), fit(width * scale)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Relative depth of an HxWx3 uint8 image as an HxW uint8 map, near bright (as ControlNet
        depth models were trained on)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise EngineError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape}")
        height, width = image.shape[:2]
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
        pixels = F.interpolate(pixels, size=self.input_size(height, width), mode="bicubic", align_corners=False)
        pixels = ((pixels.clamp(0, 1) - self._mean) / self._std).to(self.device)
        with torch.inference_mode():
            depth = self._model(pixel_values=pixels).predicted_depth
            depth = F.interpolate(depth[:, None].float(), size=(height, width), mode="bicubic",
                                  align_corners=False)[0, 0]
        depth = depth.cpu()
        low, high = float(depth.min()), float(depth.max())
        scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
        return (scaled * 255).round().clamp(0, 255).to(torch.uint8).numpy()
