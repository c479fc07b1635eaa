"""The Stable Diffusion 1.5 architecture with random weights, saved as a pipeline folder.

No machine here reaches a model hub, and for speed a random-weight model costs exactly what the
real one does (same shapes, same kernels), so the GPU benchmark builds this and loads it back
through the engine's real `from_pretrained` path (DESIGN.md, "Models without a hub"):

* UNet2DConditionModel(cross_attention_dim=768) — the other defaults are SD 1.5's
  (block_out_channels 320/640/1280/1280, 2 layers per block, 8 attention heads), ~860 M parameters;
* AutoencoderKL with SD 1.5's VAE shape: block_out_channels (128, 256, 512, 512), four
  DownEncoderBlock2D / UpDecoderBlock2D, 4 latent channels, 2 layers per block (downsamples by 8);
* CLIPTextModel with SD 1.5's text-encoder config (CLIP ViT-L/14 text tower: hidden 768, 12 layers,
  12 heads, MLP 3072, quick_gelu, vocab 49408, 77 positions);
* the byte-level CLIPTokenizer and DDIM with SD's noise schedule of the tiny test model
  (workers/tiny_model.py, which assembles both pipelines), so `steps` is exactly the number of
  UNet calls.

    from bench.sd15 import build_sd15_pipeline
    build_sd15_pipeline("/tmp/sd15", dtype=torch.float16)
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from workers.tiny_model import MAX_TOKENS, random_img2img_pipeline

TEXT_VOCAB_SIZE = 49408
HIDDEN = 768


def text_encoder_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """SD 1.5's text encoder (the CLIP ViT-L/14 text tower)."""
    return CLIPTextConfig(
        vocab_size=TEXT_VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=MAX_TOKENS,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=HIDDEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    assert len(tokenizer) <= TEXT_VOCAB_SIZE, "every token id must be below the text encoder's vocab_size"
    return CLIPTextModel(text_encoder_config(tokenizer))


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(cross_attention_dim=HIDDEN, sample_size=64)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )


def build_sd15_pipeline(path: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Build the SD 1.5-size img2img pipeline with random weights fixed by `seed`, save it to `path`
    in `dtype` (fp16: 2 GB on disk instead of 4) and return `path`. Takes ~20-60 s on a CPU."""
    target = Path(path)
    pipe = random_img2img_pipeline(vae=build_vae, text_encoder=build_text_encoder, unet=build_unet, seed=seed)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # to() warns that no module must stay in fp32: noise here
    try:
        pipe.to(dtype=dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    pipe.save_pretrained(target)
    return target


def parameter_counts(pipe: StableDiffusionImg2ImgPipeline) -> dict[str, int]:
    return {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "vae", "text_encoder")}
