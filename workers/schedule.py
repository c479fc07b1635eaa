"""The img2img schedule rule, free of torch so that submit (web) and the engine share it:
diffusers skips the first (1 − strength) of the schedule and runs int(steps × strength) steps."""

from __future__ import annotations


def denoising_steps(steps: int, strength: float) -> int:
    return min(int(steps * strength), steps)


def no_denoising_reason(steps: int, strength: float) -> str | None:
    """Why these parameters would run no denoising step at all, or None when they run some."""
    if denoising_steps(steps, strength) >= 1:
        return None
    return (f"steps × strength = {steps} × {strength} runs no denoising step (int(steps × strength) is 0): "
            "raise steps or strength")
