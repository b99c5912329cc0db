"""Working-memory estimates for SD3.5, for the memory manager (what a stage needs beside its weights).

Each estimate reads the loaded module's config and the request size, so real and tiny models get
their own figures. Like ``backends.svd.memory``'s, they count the widest live tensors times a small
count, and leave attention scores out where diffusers runs ``scaled_dot_product_attention``
(flash or memory-efficient kernels on CUDA, flash on the CPU: the scores are never materialised).
T5 is the exception: transformers' T5 attention adds its relative position bias to explicit
scores, so those are counted.

The counts were fitted to peak memory measured on this project's CPU with random weights of the
real widths in float32 (peak RSS above the loaded model, which overstates live tensors somewhat;
two cores, diffusers 0.42.1):
- transformer (one guided step, two rows, T5 at 256 tokens): Large's width (38 heads) with 2 and 4
  blocks at 512²: 492 and 511 MB, 19.5 and 20.3 widths per token; Medium's width (24 heads) at
  768²: 17.2. Every block holds the image and text streams, their modulated norms, q/k/v and the
  attention output, and a GELU MLP four times as wide; we count ``TRANSFORMER_LIVE`` = 21;
- VAE decode: 338, 1027 and 2185 MB at 256², 512² and 768², i.e. 7.1 full-resolution tensors of
  ``block_out_channels[0]`` (128) channels per pixel at the margin, 8.0 at 512² all told (the last
  level's resnets and its upsampler's twice-as-wide input); ``DECODE_LIVE`` = 8;
- VAE encode: 651 MB at 512², 5.1 such tensors; ``ENCODE_LIVE`` = 6;
- CLIP and T5: modelled, not measured. CLIP's ``output_hidden_states=True`` keeps every layer's 77
  hidden states, plus one layer's MLP (a few MB); T5-XXL at 512 tokens with guidance comes to about
  0.23 GB in bf16, its explicit scores included.
An estimate that still comes out low is caught by the manager's retry one memory mode lower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Live tensors per token in one transformer block, in units of the model's width (measured 17-20).
TRANSFORMER_LIVE = 21
#: Live full-resolution tensors of ``block_out_channels[0]`` channels while the VAE decodes (measured 8.0).
DECODE_LIVE = 8
#: The same while the VAE encodes one picture (measured 5.1).
ENCODE_LIVE = 6
#: CLIP's context length (the tokenizers pad every prompt to it).
CLIP_TOKENS = 77


def _get(config: Any, key: str) -> Any:
    return config[key] if isinstance(config, Mapping) else getattr(config, key)


def image_tokens(config: Any, width: int, height: int, vae_scale: int = 8) -> int:
    """Transformer tokens of a picture: latent pixels over the patch area."""
    patch = _get(config, "patch_size")
    return (height // vae_scale // patch) * (width // vae_scale // patch)


def transformer_bytes(config: Any, dtype_size: int, width: int, height: int, max_sequence_length: int,
                      guided: bool) -> int:
    """One denoising step of ``SD3Transformer2DModel`` on one image (two rows with guidance).

    The text stream is CLIP's 77 tokens plus T5's ``max_sequence_length`` (zeros when T5 is off,
    still that long). Latents, noise and the prediction (16 channels) are small beside this.
    """
    width_model = _get(config, "num_attention_heads") * _get(config, "attention_head_dim")
    tokens = image_tokens(config, width, height) + CLIP_TOKENS + max_sequence_length
    rows = 2 if guided else 1
    latents = 4 * rows * _get(config, "in_channels") * (width // 8) * (height // 8) * 4
    return rows * tokens * width_model * TRANSFORMER_LIVE * dtype_size + latents


def clip_bytes(config: Any, dtype_size: int, prompts: int) -> int:
    """A CLIP text encoder on ``prompts`` prompts (the negative one counts with guidance)."""
    hidden, mlp = _get(config, "hidden_size"), _get(config, "intermediate_size")
    heads, layers = _get(config, "num_attention_heads"), _get(config, "num_hidden_layers")
    per_prompt = CLIP_TOKENS * ((layers + 1) * hidden + 4 * hidden + mlp + heads * CLIP_TOKENS)
    return prompts * per_prompt * dtype_size


def t5_bytes(config: Any, dtype_size: int, max_sequence_length: int, prompts: int) -> int:
    """The T5 encoder on ``prompts`` prompts of ``max_sequence_length`` tokens.

    Per token: the residual stream and a layer's norm, q/k/v and output, the gated MLP's two wide
    projections; per head, a row of scores and of the position bias.
    """
    d_model, d_ff, heads = _get(config, "d_model"), _get(config, "d_ff"), _get(config, "num_heads")
    per_prompt = max_sequence_length * (6 * d_model + 2 * d_ff + 2 * heads * max_sequence_length)
    return prompts * per_prompt * dtype_size


def vae_decode_bytes(config: Any, dtype_size: int, width: int, height: int) -> int:
    """Decoding one picture, plus its float32 copy on the way to 8-bit pixels."""
    pixels = width * height
    return pixels * _get(config, "block_out_channels")[0] * DECODE_LIVE * dtype_size + 3 * pixels * 4


def vae_encode_bytes(config: Any, dtype_size: int, width: int, height: int) -> int:
    """Encoding one picture (img2img and inpaint), plus the float32 input."""
    pixels = width * height
    return pixels * _get(config, "block_out_channels")[0] * ENCODE_LIVE * dtype_size + 3 * pixels * 4
