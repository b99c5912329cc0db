"""Working-memory estimates for Stable Video Diffusion, for the memory manager and the decode chunk.

Each estimate is the activation memory a stage needs on top of its weights, from the request size
and the loaded module's config, so real, lite and tiny models each get their own figures. They are
deliberately simple: the widest live tensors times a small count. Attention scores are not
counted: diffusers runs attention through ``scaled_dot_product_attention``, whose fused kernels
(flash / memory-efficient on CUDA, flash on CPU) never materialise them.

The factors were fitted to peak memory measured on a CPU with random real-size weights in float32
(``bench/svd_memory.py``; RSS above the loaded model, which overstates live tensors somewhat):
- VAE decode at 1024x576: 2.40, 4.64 and 6.94 GB for chunks of 1, 2 and 3 frames, i.e. 2.27 GB a
  frame, 7.5 full-resolution 128-channel tensors (we count 8); half that in float16;
- VAE encode of one 1024x576 picture: 1.45 GB, 4.8 such tensors (we count 5);
- UNet step at 448x256 (32x56 latents): 279 MB for 2 samples, 517 MB for 4, so 119 MB a sample,
  52 level-0 tensors (we count 5.4 for the skips, 32 live and 9 for the feed-forward, 90 % of the
  RSS figure); with forward chunking 458 MB for 4: the feed-forward is 8.5 of them, and the step
  runs 3x slower.
An estimate that still comes out low is caught by the decode retry (half the chunk after an OOM)
and the manager's retry one memory mode lower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backends.svd.requests import VideoRequest

#: Live full-resolution tensors while the temporal VAE decodes one frame, in units of
#: (top-level channels x pixels): resnet input, norm, activation, conv output, the temporal
#: blocks' copies and the upsampled input of the last level.
DECODE_LIVE_TENSORS = 8
#: The same for the encoder (no temporal blocks), for one picture.
ENCODE_LIVE_TENSORS = 5
#: Live level-0 tensors per sample besides the skips and the feed-forward: the spatial and the
#: temporal transformer (norms, q/k/v, outputs, the blend of both) and their resnets.
UNET_LIVE_TENSORS = 32
#: The GEGLU feed-forward at level 0 (an 8x-wide projection, a 4x-wide gated output), measured.
UNET_FF_WIDTH = 9


def _get(config: Any, key: str) -> Any:
    return config[key] if isinstance(config, Mapping) else getattr(config, key)


def clip_working_bytes(config: Any, dtype_size: int) -> int:
    """CLIP vision encoder at 224 px: tokens x (residual stream, MLP and score rows), a few live."""
    tokens = (_get(config, "image_size") // _get(config, "patch_size")) ** 2 + 1
    hidden, mlp = _get(config, "hidden_size"), _get(config, "intermediate_size")
    heads = _get(config, "num_attention_heads")
    pixels = 3 * _get(config, "image_size") ** 2 * 4
    return tokens * (4 * hidden + mlp + heads * tokens) * dtype_size + pixels


def encode_working_bytes(request: VideoRequest, vae: Any, upcast: bool) -> int:
    """The VAE encoder on the one conditioning picture (float32 when the pipeline upcasts it).

    ``vae`` is the loaded module: when upcasting, the encoder's weights are copied to float32.
    """
    from backends.runtime.offload import module_bytes

    config = vae.config
    size = 4 if upcast else _dtype_size(vae)
    pixels = request.width * request.height
    activations = pixels * _get(config, "block_out_channels")[0] * ENCODE_LIVE_TENSORS * size
    weights = 2 * module_bytes(vae.encoder) if upcast and size > _dtype_size(vae) else 0
    return activations + weights + 2 * 3 * pixels * 4


def decode_frame_bytes(request: VideoRequest, config: Any, dtype_size: int) -> int:
    """Peak decode memory per frame in a chunk (the chunk's need is this times its size)."""
    pixels = request.width * request.height
    # The float32 copy and the 8-bit frame made from each decoded frame are small beside this.
    return pixels * _get(config, "block_out_channels")[0] * DECODE_LIVE_TENSORS * dtype_size + pixels * 3 * 4


def decode_floor_message(request: VideoRequest, frame_bytes: int, refusal: str) -> str:
    """Why a decode was refused when even one frame at a time does not fit the budget.

    One frame is the smallest decode chunk. diffusers 0.42.1's ``AutoencoderKLTemporalDecoder``
    has no tiling (``enable_tiling`` raises), and tiles of our own would not give the same video:
    its group norms and its mid-block attention see the whole frame, so each tile would get its
    own colours (diffusers' image-VAE tiling accepts that drift; we would rather say so). At real
    sizes the floor binds only for one- or two-frame videos: one 1024x576 frame needs 1.13 GB in
    float16, the UNet's chunked step for three frames already 1.29 GB.

    Args:
        request: the request (its size is named).
        frame_bytes: ``decode_frame_bytes`` for the loaded VAE.
        refusal: the memory manager's own message (what the VAE needs in all, and the budget).
    """
    from backends.runtime.probe import format_bytes

    return (f"Decoding the video needs {format_bytes(frame_bytes)} of working memory for one "
            f"{request.width}x{request.height} frame, and one frame at a time (decode chunk 1) is the "
            f"least the temporal VAE can decode: it cannot split a frame. {refusal} A smaller video "
            "size needs less.")


def unet_working_bytes(request: VideoRequest, config: Any, dtype_size: int, guided: bool, chunked: bool) -> int:
    """The UNet's peak for one denoising step.

    A batch of frames (twice with guidance) runs through the UNet at once. Its skip connections
    (``layers_per_block + 1`` per level, 4x fewer positions per level) stay alive for the up path;
    on top of them the widest moment is the level-0 feed-forward. Forward chunking runs that
    feed-forward one sample at a time, so its term no longer scales with the batch.

    Args:
        config: the UNet config (``block_out_channels``, ``layers_per_block``).
        dtype_size: bytes per element.
        guided: classifier-free guidance doubles the batch.
        chunked: whether ``enable_forward_chunking`` is on.
    """
    batch = (2 if guided else 1) * request.num_frames
    positions = (request.width // 8) * (request.height // 8)
    widths = list(_get(config, "block_out_channels"))
    layers = _get(config, "layers_per_block")
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers] * len(widths)
    skips = sum((count + 1) * width * positions // 4**level
                for level, (count, width) in enumerate(zip(layers, widths)))
    level0 = positions * widths[0]
    feed_forward = UNET_FF_WIDTH * level0 * (1 if chunked else batch)
    # Latents, their model input (with the image latents) and the prediction: small, float32 at most.
    latents = 4 * batch * positions * 8 * 4
    return batch * (skips + UNET_LIVE_TENSORS * level0) * dtype_size + feed_forward * dtype_size + latents


def _dtype_size(module: Any) -> int:
    from backends.runtime.loading import element_size

    return element_size(module)
