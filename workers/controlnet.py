"""ControlNets on a loaded pipeline: each ControlNetModel loaded once (safetensors only) and kept
in a least-recently-used set; a ControlNet img2img pipeline per combination, made with
``from_pipe`` so it shares the loaded UNet, VAE and text encoder (and their LoRA adapters)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

from workers.errors import EngineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControlUse:
    """A ControlNet (workers.library finds it) guiding a call with a map of the input."""

    name: str
    path: str
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    fingerprint: str = ""
    type: str = ""

    def key(self) -> tuple[str, str, float, float, float]:
        return (self.name, self.fingerprint, self.scale, self.start, self.end)

    def validate(self) -> None:
        if not 0 <= self.scale <= 2:
            raise EngineError(f"control scale must be between 0 and 2, got {self.scale}")
        if not 0 <= self.start < self.end <= 1:
            raise EngineError(f"control start and end must satisfy 0 <= start < end <= 1, got {self.start}, {self.end}")


def control_tensor(maps: list[np.ndarray]) -> torch.Tensor:
    """HxWx3 uint8 maps (one per batch item) as one (B, 3, H, W) float tensor in [0, 1]."""
    for m in maps:
        if m.ndim != 3 or m.shape[2] != 3 or m.dtype != np.uint8:
            raise EngineError(f"a control map must be an HxWx3 uint8 image, got shape {m.shape} and dtype {m.dtype}")
    if len({m.shape for m in maps}) > 1:
        raise EngineError("the control maps of one batch must share a size; split it by batch key")
    return torch.from_numpy(np.stack(maps)).permute(0, 3, 1, 2).float() / 255.0


class ControlNets:
    """The ControlNets loaded beside one pipeline; not thread-safe (the engine holds its lock)."""

    def __init__(self, pipe, *, device: str, dtype: torch.dtype, slots: int = 4, math_attention: bool = False) -> None:
        self._pipe = pipe
        self.device, self.dtype, self.slots = device, dtype, slots
        self._math_attention = math_attention
        self._models: OrderedDict[tuple[str, str], ControlNetModel] = OrderedDict()
        self._pipes: OrderedDict[tuple[tuple[str, str], ...], StableDiffusionControlNetImg2ImgPipeline] = OrderedDict()

    def pipeline(self, controls: tuple[ControlUse, ...]) -> StableDiffusionControlNetImg2ImgPipeline:
        """The ControlNet img2img pipeline of ``controls`` (one, or a Multi-ControlNet of several)."""
        key = tuple((c.path, c.fingerprint) for c in controls)
        if key in self._pipes:
            self._pipes.move_to_end(key)
            return self._pipes[key]
        models = [self._model(c) for c in controls]
        pipe = StableDiffusionControlNetImg2ImgPipeline.from_pipe(self._pipe, controlnet=models[0] if len(models) == 1
                                                                  else models)
        pipe.set_progress_bar_config(disable=True)
        self._pipes[key] = pipe
        while len(self._pipes) > self.slots:
            self._pipes.popitem(last=False)
        return pipe

    def _model(self, use: ControlUse) -> ControlNetModel:
        key = (use.path, use.fingerprint)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        try:
            model = ControlNetModel.from_pretrained(use.path, dtype=self.dtype, use_safetensors=True)
        except Exception as e:  # a folder that is not a ControlNet, or only pickle weights
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EngineError(f"ControlNet {use.name!r} could not be loaded: {reason}") from e
        model = model.to(self.device)
        if self._math_attention:
            from diffusers.models.attention_processor import AttnProcessor

            model.set_attn_processor(AttnProcessor())
        self._models[key] = model
        while len(self._models) > self.slots:
            old, _ = self._models.popitem(last=False)
            self._pipes = OrderedDict((k, v) for k, v in self._pipes.items() if old not in k)
            log.info("ControlNet %s unloaded (least recently used of %d)", old[0], self.slots)
        return model

    @property
    def loaded(self) -> list[str]:
        return [path for path, _ in self._models]
