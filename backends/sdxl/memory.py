"""Working-memory estimates for SDXL's stages, for the memory manager (``manager.use``).

Each estimate is the activation memory a stage needs on top of its weights, from the request size
and the loaded module's config, so real and tiny models each get their own figures. They count
the widest live tensors of the stage; attention scores are not counted, since diffusers and
transformers run attention through ``scaled_dot_product_attention``, whose fused kernels never
materialise them. A job makes its images one at a time, so no estimate scales with ``num_images``.

The factors were fitted to peak live-tensor bytes measured on the CPU in float32 with random
weights: a ``TorchDispatchMode`` added each op's output storage when it appeared and subtracted
it when the last tensor on it died, so allocator slack is not counted (the CUDA reserve of
``backends.runtime.memory`` covers that and the convolution workspaces). The script was a
throw-away; the figures:
- the real-size SDXL VAE at 128² and 256²: decode exactly 6.00 units of (128 channels x output
  pixels), encode exactly 5.00 (SVD's bench measured 4.8 for the same encoder class by RSS);
- a UNet of SDXL's real widths (320/640/1280), block types and layers per block, with one
  transformer layer per level (depth does not move the peak: blocks run one after another),
  one guided step at 256² and 384²: 39.4 and 88.6 MiB, linear in the positions; the estimate
  below gives exactly that with ``RESNET_LIVE`` 3.5. At SDXL's widths the level-0 up block's
  first resnet binds; the feed-forward term is a count, not fitted.
At 1024² that makes about 330 MB for a guided float16 UNet step, and 3.2 GB for the float32
(upcast) VAE decode, 1.6 GB in float16. Estimates that still come out low are caught by the
manager's retry one memory mode lower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Latent pixels per image pixel along each side (the VAE's 3 down-samplings).
LATENT_SCALE = 8
#: VAE decode peak in units of (``block_out_channels[0]`` x output pixels), measured (docstring).
DECODE_LIVE_TENSORS = 6
#: VAE encode peak in the same units, measured.
ENCODE_LIVE_TENSORS = 5
#: UNet: live tensors around an up block's first resnet, in units of (its input width x positions):
#: the concatenated input, its normalised and activated copies and the convolutions' outputs; fitted.
RESNET_LIVE = 3.5
#: UNet: the GEGLU feed-forward of a transformer block, in units of (level width x positions): an
#: 8x-wide projection, the 4x-wide gate and product, and the residual stream beside them.
FEED_FORWARD_LIVE = 18
#: Text encoders: residual-stream copies per layer step besides the kept hidden states.
TEXT_LIVE = 4


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def dtype_size(module: Any) -> int:
    """Bytes per element of a loaded module's weights."""
    from backends.runtime.loading import element_size

    return element_size(module)


def text_working_bytes(config: Any, dtype_size: int, tokens: int = 77) -> int:
    """One CLIP text encoder call (one prompt): every layer's hidden state is kept (the pipeline asks
    for them all and reads the penultimate), plus one layer's MLP and residual copies."""
    hidden = _get(config, "hidden_size")
    layers = _get(config, "num_hidden_layers")
    return tokens * ((layers + 1 + TEXT_LIVE) * hidden + _get(config, "intermediate_size")) * dtype_size


def unet_working_bytes(width: int, height: int, config: Any, dtype_size: int, guided: bool) -> int:
    """The UNet's peak for one denoising step of one image (two samples with guidance).

    Its skip connections (``layers_per_block + 1`` per level, 4x fewer positions per level) stay
    alive for the up path; on top of them the widest moment is either an up block's first resnet,
    whose input is the level below's output concatenated with a skip, or the feed-forward of a
    transformer level.

    Args:
        config: the UNet config (``block_out_channels``, ``layers_per_block``, ``down_block_types``).
        dtype_size: bytes per element.
        guided: classifier-free guidance doubles the batch.
    """
    batch = 2 if guided else 1
    positions = (width // LATENT_SCALE) * (height // LATENT_SCALE)
    widths = list(_get(config, "block_out_channels"))
    layers = _get(config, "layers_per_block")
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers] * len(widths)
    attention = ["CrossAttn" in kind for kind in _get(config, "down_block_types")]
    level_positions = [positions // 4**level for level in range(len(widths))]
    skips = sum((count + 1) * width * at for count, width, at in zip(layers, widths, level_positions))
    resnet = max(RESNET_LIVE * (widths[level] + widths[min(level + 1, len(widths) - 1)]) * level_positions[level]
                 for level in range(len(widths)))
    feed_forward = max([FEED_FORWARD_LIVE * width * at for width, at, attends in
                        zip(widths, level_positions, attention) if attends], default=0)
    # Latents, the scheduler's copies and the noise prediction: small, float32 at most.
    latents = 4 * batch * positions * _get(config, "in_channels", 4) * 4
    return int(batch * (skips + max(resnet, feed_forward)) * dtype_size) + latents


def vae_weights_float32(vae: Any) -> int:
    """The float32 copies of the VAE's weights an upcast encode or decode runs on (``vae.float32_call``)."""
    return 4 * sum(tensor.numel() for tensor in (*vae.parameters(), *vae.buffers()))


def vae_decode_bytes(width: int, height: int, vae: Any, upcast: bool) -> int:
    """Decoding one image: the full-resolution tensors of the last up blocks, plus the float32
    weight copies when it runs upcast (``vae.decode_upcast``)."""
    size = 4 if upcast else dtype_size(vae)
    pixels = width * height
    activations = pixels * _get(vae.config, "block_out_channels")[0] * DECODE_LIVE_TENSORS * size
    weights = vae_weights_float32(vae) if upcast and dtype_size(vae) < 4 else 0
    return activations + weights + 3 * pixels * 4


def vae_encode_bytes(width: int, height: int, vae: Any, upcast: bool) -> int:
    """Encoding one picture (float32 when ``vae.encode_upcast``), with its float32 copy."""
    size = 4 if upcast else dtype_size(vae)
    pixels = width * height
    activations = pixels * _get(vae.config, "block_out_channels")[0] * ENCODE_LIVE_TENSORS * size
    weights = vae_weights_float32(vae) if upcast and dtype_size(vae) < 4 else 0
    return activations + weights + 2 * 3 * pixels * 4
