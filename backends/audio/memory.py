"""Working-memory estimates for Stable Audio Open, for the memory manager (what a stage needs beside its weights).

Each estimate reads the loaded module's config, so real and tiny models get their own figures.
The request's length does not enter: the pipeline always denoises and decodes the model's whole
window (``transformer.config.sample_size`` latent frames, 47.55 s for the released model) and
cuts the clip out of it afterwards.

The factors were measured on this project's CPU in float32 with random weights of the real widths
(diffusers 0.42.1, transformers 5.24), counting peak live tensor storage with a
``TorchDispatchMode`` (each op's output storage added when it appears and taken off when the last
tensor on it dies), so allocator slack is not counted; the CUDA reserve of
``backends.runtime.memory`` covers that and the convolution workspaces. The script was a
throw-away; the figures:

- VAE decode (weight norm folded into the weights at load, ``pipes.fold_weight_norm``): exactly
  4.50 tensors of ``decoder_channels`` (128) channels at the output rate, at 16, 32 and 64 latent
  frames; ``DECODE_LIVE`` = 5. Unfolded, every decode also recomputed a copy of the decoder's
  weights (298 MB in float32). The released model at 47.55 s in float16: 2.7 GB;
- DiT step: 20.1 widths (1536) per token and row at 1025 tokens, one row or two, depth 2 (blocks
  run one after another, depth does not move the peak); ``TRANSFORMER_LIVE`` = 22. Attention
  runs through ``scaled_dot_product_attention``; its scores are counted on top in case a
  kernel materialises them (100 MB for the released model with guidance, in float16);
- T5: modelled as for SD3.5's T5 (explicit scores with the relative position bias); at T5-base's
  width and 128 tokens it gave 6.8 MB where 5.3 MB were measured.
An estimate that still comes out low is caught by the manager's retry one memory mode lower.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: VAE decode: live tensors of ``decoder_channels`` channels at the output rate (measured 4.50).
DECODE_LIVE = 5
#: DiT: live tensors per token and row in units of the model's width (measured 20.1).
TRANSFORMER_LIVE = 22


def _get(config: Any, key: str) -> Any:
    return config[key] if isinstance(config, Mapping) else getattr(config, key)


def t5_bytes(config: Any, dtype_size: int, tokens: int, prompts: int) -> int:
    """The T5 encoder on ``prompts`` prompts (the negative one counts with guidance) of ``tokens`` tokens.

    Per token: the residual stream and a layer's norm, q/k/v and output, the MLP's wide
    projections; per head, a row of scores and of the position bias.
    """
    d_model, d_ff, heads = _get(config, "d_model"), _get(config, "d_ff"), _get(config, "num_heads")
    per_prompt = tokens * (6 * d_model + 2 * d_ff + 2 * heads * tokens)
    return prompts * per_prompt * dtype_size


def projection_bytes(config: Any, dtype_size: int, tokens: int, guided: bool) -> int:
    """The projection model: the text states projected and masked, and the two seconds embeddings."""
    rows = 2 if guided else 1
    width = max(_get(config, "text_encoder_dim"), _get(config, "conditioning_dim"))
    return 3 * rows * (tokens + 2) * width * dtype_size


def transformer_bytes(config: Any, dtype_size: int, guided: bool, text_tokens: int) -> int:
    """One denoising step of ``StableAudioDiTModel`` (two rows with guidance).

    The sequence is the latent window plus one prepended global token; the cross-attention keys
    and values come from ``text_tokens`` (T5's plus the two seconds tokens).
    """
    rows = 2 if guided else 1
    heads, head_dim = _get(config, "num_attention_heads"), _get(config, "attention_head_dim")
    width = heads * head_dim
    tokens = _get(config, "sample_size") + 1
    stream = rows * tokens * width * TRANSFORMER_LIVE
    scores = rows * heads * tokens * (tokens + text_tokens)
    cross = 4 * rows * text_tokens * _get(config, "cross_attention_dim")
    # Latents, noise, the scheduler's model outputs and the guided prediction: float32 at most.
    latents = 8 * rows * _get(config, "in_channels") * tokens * 4
    return (stream + scores + cross) * dtype_size + latents


def decode_samples(vae_config: Any, latent_frames: int) -> int:
    """Samples per channel the VAE decodes ``latent_frames`` latent frames into."""
    return latent_frames * math.prod(_get(vae_config, "downsampling_ratios"))


def vae_decode_bytes(vae_config: Any, dtype_size: int, latent_frames: int) -> int:
    """Decoding the window: the full-rate tensors of the last decoder block, plus the float32
    copies of the audio on the way out (the whole decoded window and the clip cut from it)."""
    samples = decode_samples(vae_config, latent_frames)
    channels = _get(vae_config, "decoder_channels")
    audio = 2 * _get(vae_config, "audio_channels") * samples * 4
    return DECODE_LIVE * channels * samples * dtype_size + audio
