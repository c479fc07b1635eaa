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


def _build_unet(cross_attention_dim: int = CROSS_ATTENTION_DIM) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
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


# --- the tiny library: a checkpoint in both layouts, ControlNets, a LoRA, a depth model -----------------

TINY_CONFIGS = "ca32"  # the base of the tiny model (cross-attention width 32), as the library names it
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _randomise(modules: list[torch.nn.Module], *, std: float) -> None:
    with torch.no_grad():
        for module in modules:
            for parameter in module.parameters():
                parameter.normal_(0.0, std)


def build_tiny_controlnet(unet: UNet2DConditionModel, path: str | Path, *, seed: int = 0) -> Path:
    """A ControlNet made from ``unet`` whose zero convolutions are randomised (from_unet starts them
    at zero, which would leave the output exactly as plain img2img), saved to ``path``."""
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
        _randomise([*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                    controlnet.controlnet_cond_embedding.conv_out], std=0.3)
    controlnet.save_pretrained(Path(path), safe_serialization=True)
    return Path(path)


def build_tiny_lora(path: str | Path, *, seed: int = 0, cross_attention_dim: int = CROSS_ATTENTION_DIM,
                    text_encoder: bool = True, rank: int = 4) -> Path:
    """A LoRA for the tiny UNet (and its text encoder) with random lora_B (PEFT starts it at zero),
    saved as one .safetensors file at ``path``. ``cross_attention_dim`` other than the tiny model's
    makes a LoRA for another base."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    target = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _build_unet(cross_attention_dim)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS,
                                    init_lora_weights="gaussian"))
        _randomise([m for n, m in unet.named_modules() if n.endswith("lora_B")], std=0.3)
        layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))}
        if text_encoder:
            with tempfile.TemporaryDirectory() as scratch:
                encoder = _build_text_encoder(build_byte_tokenizer(Path(scratch)))
            encoder.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TEXT_LORA_TARGETS,
                                           init_lora_weights="gaussian"))
            _randomise([m for n, m in encoder.named_modules() if n.endswith("lora_B")], std=0.3)
            layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder))
    with tempfile.TemporaryDirectory() as scratch:
        StableDiffusionImg2ImgPipeline.save_lora_weights(scratch, safe_serialization=True, **layers)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((Path(scratch) / "pytorch_lora_weights.safetensors").read_bytes())
    return target


def build_tiny_depth(path: str | Path, *, seed: int = 0) -> Path:
    """A tiny Depth Anything (DINOv2 backbone of width 32, 4 layers, 70-px input), saved to ``path``."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
                            image_size=70, patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                                 reassemble_hidden_size=32, head_hidden_size=8, patch_size=14)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DepthAnythingForDepthEstimation(config)
    model.save_pretrained(Path(path), safe_serialization=True)
    (Path(path) / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "DPTImageProcessor", "size": {"height": 70, "width": 70}, "keep_aspect_ratio": True,
        "ensure_multiple_of": 14, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    return Path(path)


def build_tiny_clip(path: str | Path, *, seed: int = 0) -> Path:
    """A tiny CLIP (text and vision towers of width 32 and 2 layers, 32-px images in 8-px patches,
    projection 16) with the byte-level tokenizer and a preprocessor config, saved to ``path``: what
    CLIPScore loads from clip/ in the library."""
    from transformers import CLIPConfig, CLIPModel

    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    tokenizer = build_byte_tokenizer(target)  # vocab.json + merges.txt, in the folder itself
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={**tower, "vocab_size": TEXT_VOCAB_SIZE, "max_position_embeddings": MAX_TOKENS,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 32},
        "crop_size": {"height": 32, "width": 32}, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    return target


def build_tiny_library(root: str | Path, *, seed: int = 0) -> Path:
    """The tiny model library under ``root`` (PIXELMILL_MODELS_DIR), offline, in seconds:

    tiny/ (a diffusers checkpoint) · tiny-single.safetensors (the same weights in the A1111/ComfyUI
    layout) with configs/ca32/ (the configs it loads with) · controlnets/canny, tile, depth ·
    loras/tiny-style.safetensors (UNet and text encoder) · depth/tiny-depth · clip/tiny-clip ·
    face/tiny-restorer.onnx and face/tiny-yunet.onnx (workers/tiny_faces.py).
    """
    import shutil

    from workers.ldm_layout import save_single_file
    from workers.tiny_faces import build_tiny_restorer, build_tiny_yunet

    library = Path(root)
    checkpoint = library / "tiny"
    if not (checkpoint / "model_index.json").exists():
        build_tiny_pipeline(checkpoint, seed=seed)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(checkpoint, safety_checker=None,
                                                          requires_safety_checker=False, use_safetensors=True)
    save_single_file(pipe, library / "tiny-single.safetensors")
    configs = library / "configs" / TINY_CONFIGS
    shutil.rmtree(configs, ignore_errors=True)
    shutil.copytree(checkpoint, configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    for i, control_type in enumerate(("canny", "tile", "depth")):
        build_tiny_controlnet(pipe.unet, library / "controlnets" / control_type, seed=seed + 10 + i)
    build_tiny_lora(library / "loras" / "tiny-style.safetensors", seed=seed + 20)
    build_tiny_depth(library / "depth" / "tiny-depth", seed=seed + 30)
    build_tiny_clip(library / "clip" / "tiny-clip", seed=seed + 40)
    build_tiny_restorer(library / "face" / "tiny-restorer.onnx", seed=seed + 50)
    build_tiny_yunet(library / "face" / "tiny-yunet.onnx")
    return library
