"""Text-encoder outputs for a prompt and its negative, with ``clip_skip``, as the pipeline takes
them back (``prompt_embeds=`` / ``negative_prompt_embeds=``) — so they can be cached.

transformers >= 5.6 flattened ``CLIPTextModel`` (no ``.text_model``), so diffusers' own
``clip_skip`` raises; here the hidden state ``clip_skip`` layers before the last goes through the
final layer norm, as diffusers did. ``clip_skip=0`` is exactly what the pipeline computes itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.errors import EngineError


@dataclass(frozen=True)
class PromptEmbeds:
    """(1, tokens, width) each, on the engine's device, in the text encoder's dtype."""

    prompt: torch.Tensor
    negative: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"prompt": self.prompt, "negative": self.negative}

    @classmethod
    def from_dict(cls, tensors: dict[str, torch.Tensor], *, device: str, dtype: torch.dtype) -> PromptEmbeds:
        return cls(prompt=tensors["prompt"].to(device=device, dtype=dtype),
                   negative=tensors["negative"].to(device=device, dtype=dtype))


def text_layers(text_encoder: torch.nn.Module) -> int:
    return int(text_encoder.config.num_hidden_layers)


def encode_text(pipe, text: str, *, clip_skip: int = 0) -> torch.Tensor:
    """The text encoder's output for ``text``, as the pipeline conditions on it."""
    encoder, tokenizer = pipe.text_encoder, pipe.tokenizer
    layers = text_layers(encoder)
    if not 0 <= clip_skip < layers:
        raise EngineError(f"clip_skip must be between 0 and {layers - 1} for this text encoder ({layers} layers), "
                          f"got {clip_skip}")
    tokens = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    ids = tokens.input_ids.to(encoder.device)
    mask = tokens.attention_mask.to(encoder.device) if getattr(encoder.config, "use_attention_mask", False) else None
    with torch.inference_mode():
        if clip_skip == 0:
            embeds = encoder(ids, attention_mask=mask)[0]
        else:
            output = encoder(ids, attention_mask=mask, output_hidden_states=True)
            hidden = output.hidden_states[-(clip_skip + 1)]
            # transformers >= 5.6 flattened CLIPTextModel; older ones keep it under .text_model
            norm = getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm
            embeds = norm(hidden)
    return embeds.to(dtype=encoder.dtype)


def encode_prompts(pipe, prompt: str, negative_prompt: str, *, clip_skip: int = 0) -> PromptEmbeds:
    return PromptEmbeds(prompt=encode_text(pipe, prompt, clip_skip=clip_skip),
                        negative=encode_text(pipe, negative_prompt, clip_skip=clip_skip))
