"""CLIPScore: how well an image matches its prompt, 100 · max(cos(image, text), 0) between CLIP's
projected embeddings (Hessel et al. 2021, without their w = 2.5 rescale — as torchmetrics reports
it). A transformers ``CLIPModel`` from a local folder (safetensors only) with its tokenizer; the
image preprocessing (resize the short side, centre crop, CLIP's normalisation) is done here in
torch, so no image-processor backend (torchvision) is needed. torchmetrics 1.9's CLIPScore breaks
with transformers 5, hence this.

Loaded once per worker process (``load_scorer``, cached by path and fingerprint) and run under
``torch.inference_mode``. openai/clip-vit-base-patch32 is MIT-licensed; ~150 M parameters, about
0.2 s per image on one CPU thread (bench/enhance_audit.py, docs/benchmarks.md).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workers.errors import EngineError, ModelLoadError
from workers.library import read_json

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScorer:
    def __init__(self, model: torch.nn.Module, tokenizer, *, size: int, crop: int, mean: tuple[float, ...],
                 std: tuple[float, ...], device: str = "cpu", name: str = "") -> None:
        self._model = model.eval()
        self.dtype = next(model.parameters()).dtype  # the pixels go in at the model's (fp32, or fp16 on a GPU)
        self._tokenizer = tokenizer
        self.size, self.crop, self.device, self.name = size, crop, device, name
        self._mean = torch.tensor(mean).view(1, 3, 1, 1)
        self._std = torch.tensor(std).view(1, 3, 1, 1)
        self.max_tokens = int(min(getattr(tokenizer, "model_max_length", 77) or 77,
                                  model.config.text_config.max_position_embeddings))

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu", name: str = "") -> ClipScorer:
        from transformers import CLIPModel, CLIPTokenizer

        folder = Path(path)
        try:
            model = CLIPModel.from_pretrained(folder, use_safetensors=True).to(device)
            tokenizer = CLIPTokenizer.from_pretrained(folder)
        except Exception as e:  # noqa: BLE001 — any failure means the folder is unusable
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"could not load the CLIP model at {folder}: {reason}. Put a transformers CLIPModel "
                                 "folder (config.json, model.safetensors, vocab.json, merges.txt) under clip/ in "
                                 "the model library") from e
        pre = read_json(folder / "preprocessor_config.json") or {}
        image_size = int(model.config.vision_config.image_size)
        return cls(model, tokenizer, size=_side(pre.get("size"), default=image_size),
                   crop=_side(pre.get("crop_size"), default=image_size),
                   mean=tuple(pre.get("image_mean", CLIP_MEAN)), std=tuple(pre.get("image_std", CLIP_STD)),
                   device=device, name=name or folder.name)

    def pixels(self, images: list[np.ndarray]) -> torch.Tensor:
        """CLIP's preprocessing of HxWx3 uint8 images: short side to ``size`` (bicubic), centre crop
        ``crop``, scaled to [0, 1] and normalised; (N, 3, crop, crop)."""
        batch = []
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise EngineError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape}")
            height, width = image.shape[:2]
            scale = self.size / min(height, width)
            resized = (max(self.crop, round(height * scale)), max(self.crop, round(width * scale)))
            x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None] / 255.0  # a writable copy
            x = F.interpolate(x, size=resized, mode="bicubic", align_corners=False).clamp(0, 1)
            top, left = (resized[0] - self.crop) // 2, (resized[1] - self.crop) // 2
            batch.append(x[:, :, top:top + self.crop, left:left + self.crop])
        return ((torch.cat(batch) - self._mean) / self._std).to(self.device, self.dtype)

    def cosines(self, images: list[np.ndarray], prompts: list[str]) -> list[float]:
        """cos(image_i, prompt_i) of CLIP's normalised projected embeddings."""
        if len(images) != len(prompts):
            raise EngineError(f"{len(images)} images for {len(prompts)} prompts")
        tokens = self._tokenizer(prompts, padding=True, truncation=True, max_length=self.max_tokens,
                                 return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self._model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                              pixel_values=self.pixels(images))
            cos = (out.image_embeds.float() * out.text_embeds.float()).sum(dim=-1)
        return [float(c) for c in cos.cpu()]

    def scores(self, images: list[np.ndarray], prompts: list[str]) -> list[float]:
        """CLIPScore of each image against its prompt, in [0, 100]."""
        return [clip_score(c) for c in self.cosines(images, prompts)]

    def score(self, image: np.ndarray, prompt: str) -> float:
        return self.scores([image], [prompt])[0]


def clip_score(cosine: float) -> float:
    """100 · max(cos, 0), rounded to 4 decimals (what the job records)."""
    return round(100.0 * max(float(cosine), 0.0), 4)


@lru_cache(maxsize=2)
def load_scorer(*, path: str, fingerprint: str, device: str = "cpu") -> ClipScorer:
    """The CLIP model at ``path`` (a library folder), loaded once per process; a changed folder
    (another fingerprint) is loaded again."""
    return ClipScorer.load(path, device=device)


def _side(value, *, default: int) -> int:
    if isinstance(value, dict):
        return int(value.get("shortest_edge") or value.get("height") or default)
    return int(value) if isinstance(value, int | float) else default
