"""A tiny random-weight Stable Diffusion img2img pipeline, saved to disk, for tests and demos.

It has the real architecture's shapes where they matter (4 latent channels, a VAE that
downsamples by 8, a CLIP text encoder behind a CLIP tokenizer) but only a few thousand
parameters per block, so it runs in about a second on a CPU and needs no download.

`random_img2img_pipeline` assembles any SD-shaped img2img pipeline with random weights (the
byte-level tokenizer, DDIM with SD's schedule, the models given); bench/sd15.py builds the
SD 1.5-size one with it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_TOKENS = 77
TEXT_VOCAB_SIZE = 1000
CROSS_ATTENTION_DIM = 32


def _byte_level_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode: one printable character for each of the 256 byte values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {byte: byte for byte in printable}
    for extra, byte in enumerate(b for b in range(256) if b not in chars):
        chars[byte] = 256 + extra
    return [chr(chars[byte]) for byte in range(256)]


def build_byte_tokenizer(folder: Path) -> CLIPTokenizer:
    """A character-level CLIP tokenizer (514 ids, no merges) from vocab.json and merges.txt written to `folder`."""
    alphabet = _byte_level_alphabet()
    tokens = [*alphabet, *(char + "</w>" for char in alphabet), BOS, EOS]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_TOKENS)


def _build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=TEXT_VOCAB_SIZE,
        hidden_size=CROSS_ATTENTION_DIM,
        intermediate_size=37,
        num_hidden_layers=5,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        norm_num_groups=32,
    )


def _build_vae() -> AutoencoderKL:
    """Four blocks, so it downsamples by 8 like the real SD VAE."""
    return AutoencoderKL(
        block_out_channels=(32, 32, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )


def sd_scheduler() -> DDIMScheduler:
    """DDIM with Stable Diffusion's noise schedule."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def random_img2img_pipeline(*, vae: Callable[[], AutoencoderKL],
                            text_encoder: Callable[[CLIPTokenizer], CLIPTextModel],
                            unet: Callable[[], UNet2DConditionModel], seed: int = 0) -> StableDiffusionImg2ImgPipeline:
    """An img2img pipeline of the models the builders make, with random weights fixed by `seed`
    (drawn in the order VAE, text encoder, UNet), the byte-level tokenizer and DDIM."""
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_byte_tokenizer(Path(scratch))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StableDiffusionImg2ImgPipeline(
            vae=vae(),
            text_encoder=text_encoder(tokenizer),
            tokenizer=tokenizer,
            unet=unet(),
            scheduler=sd_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def build_tiny_pipeline(path: str | Path, *, seed: int = 0) -> Path:
    """Build the tiny pipeline with weights fixed by `seed`, save it to `path` and return `path`."""
    target = Path(path)
    random_img2img_pipeline(vae=_build_vae, text_encoder=_build_text_encoder, unet=_build_unet,
                            seed=seed).save_pretrained(target)
    return target
