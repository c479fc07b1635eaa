"""latents_preview: SD 1.x latents to a small RGB image with the latent2rgb factors, no VAE."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from workers.errors import EngineError
from workers.preview import latents_preview, preview_png


def _latents(batch: int = 1, h: int = 64, w: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 4, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("shape", "max_side", "expected"), [
    ((1, 4, 64, 48), 128, (128, 96, 3)),  # upscaled: longer side to max_side
    ((2, 4, 64, 64), 128, (128, 128, 3)),
    ((1, 4, 64, 48), 0, (64, 48, 3)),  # the latent's own size
    ((4, 64, 48), 32, (32, 24, 3)),  # one unbatched latent, shrunk
    ((1, 4, 8, 8), 128, (128, 128, 3)),
])
def test_shape_and_dtype(shape, max_side, expected):
    preview = latents_preview(torch.randn(*shape), max_side=max_side)
    assert preview.shape == expected and preview.dtype == np.uint8


def test_follows_the_input_and_previews_the_first_of_a_batch():
    latents = _latents(batch=2)
    preview = latents_preview(latents)
    assert preview.std() > 5  # not a constant image for a non-constant input
    assert np.array_equal(preview, latents_preview(latents[:1]))
    assert not np.array_equal(preview, latents_preview(latents[1:]))
    flat = latents_preview(torch.zeros(1, 4, 16, 16))
    assert np.all(flat == flat[0, 0]) and np.all(np.abs(flat.astype(int) - 128) <= 1)  # zero latent: mid grey


def test_channel_zero_is_brightness():
    """The first SD 1.x latent channel carries luminance: its sign sets light or dark."""
    light = torch.zeros(1, 4, 8, 8)
    light[:, 0] = 2.0
    assert latents_preview(light).mean() > 200 and latents_preview(-light).mean() < 60


def test_nearest_upscale_keeps_latent_cells_sharp():
    preview = latents_preview(_latents(h=8, w=8), max_side=64)
    cells = preview.reshape(8, 8, 8, 8, 3)  # each latent cell becomes an 8×8 block of one colour
    assert np.all(cells == cells[:, :1, :, :1])


def test_accepts_half_precision_and_grad_tensors():
    latents = _latents().half()
    assert latents_preview(latents).shape == (128, 96, 3)
    assert latents_preview(_latents().requires_grad_()).dtype == np.uint8


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (1, 16, 8, 8), (8, 8), (1, 1, 4, 8, 8)])
def test_refuses_what_is_not_sd1_latents(shape):
    with pytest.raises(EngineError, match="4, h, w"):
        latents_preview(torch.zeros(*shape))


def test_png_is_small_and_decodes():
    png = preview_png(_latents(h=64, w=64))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (128, 128) and len(png) < 64 * 1024


def test_is_cheap_next_to_a_step():
    """A preview per step must not slow a run: many per call of one tiny UNet step's cost.
    No timing is asserted (shared machine); this only runs it enough times to show it is cheap."""
    latents = _latents(h=64, w=64)
    for _ in range(200):
        latents_preview(latents)
