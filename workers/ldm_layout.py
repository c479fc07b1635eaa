"""A Stable Diffusion (1.x/2.x-shaped) pipeline's weights in the original single-file layout — the
one A1111 and ComfyUI keep in ``models/checkpoints/*.safetensors`` (``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.transformer.text_model.*``).

The inverse of what diffusers' ``from_single_file`` converts, for any number of blocks and layers
per block, so the tiny model can be saved as a single file and loaded back the way a user's
checkpoint is (workers/tiny_model.py). The round trip is tested to give the same tensors back.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP = "cond_stage_model.transformer.text_model."

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
}
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_FIXED = {"conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    layer, _, leaf = rest.rpartition(".")
    return f"{_RESNET.get(layer, layer)}.{leaf}"


def unet_key(key: str, *, layers_per_block: int, up_has_attention: list[bool]) -> str:
    """The original name of a diffusers UNet weight."""
    per = layers_per_block + 1
    module, _, leaf = key.rpartition(".")
    if module in _UNET_FIXED:
        return f"{_UNET_FIXED[module]}.{leaf}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.0.{_resnet(m[3])}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * per + layers_per_block}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"output_blocks.{int(m[1]) * per + int(m[2])}.0.{_resnet(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"output_blocks.{int(m[1]) * per + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        slot = 2 if up_has_attention[int(m[1])] else 1
        return f"output_blocks.{int(m[1]) * per + layers_per_block}.{slot}.conv.{m[2]}"
    raise ValueError(f"no original-layout name for UNet weight {key!r}")


def vae_key(key: str, *, blocks: int) -> str:
    """The original name of a diffusers AutoencoderKL weight."""
    module, _, leaf = key.rpartition(".")
    half, _, rest = module.partition(".")
    if rest in _VAE_FIXED:
        return f"{half}.{_VAE_FIXED[rest]}.{leaf}"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)(\..+)?", rest):
        index = int(m[2]) if m[1] == "down" else blocks - 1 - int(m[2])
        inner = (m[4] or "").replace(".conv_shortcut", ".nin_shortcut")
        return f"{half}.{m[1]}.{index}.block.{m[3]}{inner}.{leaf}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", rest):
        return f"{half}.down.{m[1]}.downsample.conv.{leaf}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", rest):
        return f"{half}.up.{blocks - 1 - int(m[1])}.upsample.conv.{leaf}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)(\..+)?", rest):
        inner = (m[2] or "").replace(".conv_shortcut", ".nin_shortcut")
        return f"{half}.mid.block_{int(m[1]) + 1}{inner}.{leaf}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        return f"{half}.mid.attn_1.{_VAE_ATTENTION[m[1]]}.{leaf}"
    if not rest or rest in ("conv_in", "conv_out"):
        return key  # quant_conv, post_quant_conv, encoder.conv_in …: the same name
    raise ValueError(f"no original-layout name for VAE weight {key!r}")


def to_original_layout(pipe: Any) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and CLIP text encoder weights under their original names."""
    unet_config = pipe.unet.config
    up_has_attention = ["CrossAttn" in kind for kind in unet_config.up_block_types]
    state: dict[str, torch.Tensor] = {}
    for key, tensor in pipe.unet.state_dict().items():
        state[UNET + unet_key(key, layers_per_block=unet_config.layers_per_block,
                              up_has_attention=up_has_attention)] = tensor
    blocks = len(pipe.vae.config.down_block_types)
    for key, tensor in pipe.vae.state_dict().items():
        name = vae_key(key, blocks=blocks)
        if ".mid.attn_1." in name and name.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # the original VAE attention is 1×1 convolutions
        state[VAE + name] = tensor
    for key, tensor in pipe.text_encoder.state_dict().items():
        state[CLIP + key.removeprefix("text_model.")] = tensor
    return {key: value.detach().to("cpu").contiguous() for key, value in state.items()}


def save_single_file(pipe: Any, path: str | Path) -> Path:
    """Save the pipeline's weights as one original-layout .safetensors file at ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_original_layout(pipe), str(target), metadata={"format": "pt"})
    return target
