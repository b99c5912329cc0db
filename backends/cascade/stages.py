"""What Stable Cascade's stages and both image sides share: stage names, latent sizes, the result,
and the working-memory estimates the manager places components by.

Split out of ``backends.cascade.backend`` so that the image side (``backends.cascade.image``) and
the benchmarks use these without importing the backend: each module now stands above what it
uses. No torch here; the estimates are arithmetic on configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol

if TYPE_CHECKING:
    import torch
    from PIL import Image

STAGE_C = "Stage C (prior)"
STAGE_B = "Stage B (decoder)"
STAGE_A = "Stage A (decode)"

#: Pixels per stage C latent pixel (``resolution_multiple`` of the prior pipeline); the result is
#: rounded up, so 1024 px gives 24 latent pixels.
RESOLUTION_MULTIPLE = 42.67
#: Stage B latent pixels per stage C latent pixel (``latent_dim_scale`` of the decoder pipeline);
#: rounded down, so 24 gives 256, which stage A turns into 1024 px.
LATENT_DIM_SCALE = 10.67

TEXT_ENCODER = "cascade.text_encoder"
PRIOR = "cascade.prior"
DECODER = "cascade.decoder"
VQGAN = "cascade.vqgan"

class CascadeJob(Protocol):
    """What the stages read from a request: every Cascade request type has these fields."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_images: int
    seed: int
    prior_steps: int
    decoder_steps: int
    prior_guidance: float
    decoder_guidance: float
    truncated: tuple[str, ...]


@dataclass
class ImageResult:
    """What one text-to-image, variation or img2img run gives back."""

    #: The decoded images, ``num_images`` of them, at the requested size.
    images: list[Image.Image]
    #: JSON-able metadata: seeds, sizes, steps, guidances, dtype, sources, timings, notices.
    info: dict[str, Any]
    #: The stage C latents that stage B received (CPU), for tests and img2img/variation work.
    stage_c_latents: torch.Tensor


def stage_c_size(height: int, width: int) -> tuple[int, int]:
    """Stage C latent height and width for an image size (as the prior pipeline rounds it)."""
    return math.ceil(height / RESOLUTION_MULTIPLE), math.ceil(width / RESOLUTION_MULTIPLE)


def stage_b_size(stage_c_height: int, stage_c_width: int) -> tuple[int, int]:
    """Stage B latent height and width for a stage C latent (as the decoder pipeline rounds it)."""
    return int(stage_c_height * LATENT_DIM_SCALE), int(stage_c_width * LATENT_DIM_SCALE)


#: The config fields the estimates read, for the full-size models; used for a stage whose config
#: is not given (before loading). Configs of lite and tiny models give smaller figures.
FULL_SIZE_SHAPES: dict[str, dict[str, Any]] = {
    "text_encoder": {"intermediate_size": 5120, "num_attention_heads": 20},  # ViT-bigG
    "prior": {"block_out_channels": (2048, 2048), "num_attention_heads": (32, 32), "clip_seq": 4,
              "patch_size": 1},
    "decoder": {"block_out_channels": (320, 640, 1280, 1280), "num_attention_heads": (0, 0, 20, 20),
                "clip_seq": 4, "patch_size": 2},
    "vqgan": {"embed_dim": 384, "levels": 2, "up_down_scale_factor": 2},
}


def working_bytes(request: CascadeJob, dtype_size: int,
                  configs: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Rough peak activation memory of each stage for this request, for the memory manager.

    Each term is batch x positions x the widest live activation x bytes; the small factors count
    the few tensors alive at once, and attention scores count as materialised (no flash
    attention), the worst case. The backend passes each loaded module's config, so lite and tiny
    models get their own figures.

    Args:
        request: the job (size, batch, guidance).
        dtype_size: bytes per element of the weights' dtype.
        configs: model configs by stage (``text_encoder``, ``prior``, ``decoder``, ``vqgan``), as
            config objects or dicts (``load_config``); missing stages use ``FULL_SIZE_SHAPES``.
    """
    configs = {**FULL_SIZE_SHAPES, **(configs or {})}

    def get(stage: str, key: str) -> Any:
        config = configs[stage]
        return config[key] if isinstance(config, Mapping) else getattr(config, key)

    cfg_c = 2 if request.prior_guidance > 1 else 1
    cfg_b = 2 if request.decoder_guidance > 1 else 1
    n = request.num_images
    c_h, c_w = stage_c_size(request.height, request.width)
    b_h, b_w = stage_b_size(c_h, c_w)
    # Text: 77 tokens through the MLP, plus every head's 77x77 scores; one or two prompts.
    text = max(cfg_c, cfg_b) * 77 * (get("text_encoder", "intermediate_size")
                                     + get("text_encoder", "num_attention_heads") * 77)
    # Stage C: the widest level with a 4x MLP at every latent pixel (x4 live tensors); attention
    # over the pixels plus 77 text and 2 x clip_seq pooled/image tokens.
    tokens = c_h * c_w // get("prior", "patch_size") ** 2
    keys = tokens + 77 + 2 * get("prior", "clip_seq")
    widest, heads = max(get("prior", "block_out_channels")), max(get("prior", "num_attention_heads"))
    prior = n * cfg_c * tokens * (widest * 16 + heads * keys)
    # Stage B: level 0 (after the patch embedding) with a 4x MLP and its global response norm (x5
    # live 4x-wide tensors: 19.6-19.8 level-0 tensors measured on the real lite decoder at 512² and
    # 768², float32, bench/real_sizes.py with the CPU heap bound); attention only on deeper
    # levels, each with 4x fewer positions than the one above.
    tokens = b_h * b_w // get("decoder", "patch_size") ** 2
    attention = max(heads * (tokens // 4**level) * (tokens // 4**level + get("decoder", "clip_seq"))
                    for level, heads in enumerate(get("decoder", "num_attention_heads")))
    decoder = n * cfg_b * (tokens * get("decoder", "block_out_channels")[0] * 20 + attention)
    vqgan = n * vqgan_decode_bytes(request.height, request.width, dtype_size, configs["vqgan"])
    return {"text_encoder": text * dtype_size, "prior": prior * dtype_size,
            "decoder": decoder * dtype_size, "vqgan": vqgan}


def vqgan_decode_bytes(height: int, width: int, dtype_size: int, config: Any) -> int:
    """Stage A's peak for one image of ``height`` x ``width`` pixels: a whole decode or one tile.

    The outermost level (``embed_dim / 2**(levels-1)`` channels at 1/``up_down_scale_factor`` of
    the output) with its 4x MLP (x3 live tensors), plus the float32 image. Measured peak of live
    tensors on the CPU (float32): 0.81 of this on the tiny model, 0.91 on the real-size one.
    """
    get = (lambda key: config[key]) if isinstance(config, Mapping) else (lambda key: getattr(config, key))
    positions = height * width // get("up_down_scale_factor") ** 2
    outer = get("embed_dim") // 2 ** (get("levels") - 1)
    return positions * outer * 12 * dtype_size + 3 * height * width * 4


def vqgan_tile_bytes(request: CascadeJob, tile_height: int, tile_width: int, dtype_size: int,
                     config: Any | None = None) -> int:
    """Stage A's peak when it decodes in tiles of ``tile_height`` x ``tile_width`` pixels.

    One tile's decode (``vqgan_decode_bytes``), its weighted float32 copy, and the float32 image
    the tiles are blended into (``backends.cascade.tiling.decode_tiled``), per image.

    Args:
        request: the job (its size and batch).
        tile_height: tile height in image pixels (``TileGrid.tile_height * TileGrid.scale``).
        tile_width: tile width in image pixels.
        dtype_size: bytes per element of the weights' dtype.
        config: the VQGAN config; ``FULL_SIZE_SHAPES["vqgan"]`` when None.
    """
    config = FULL_SIZE_SHAPES["vqgan"] if config is None else config
    tile = vqgan_decode_bytes(tile_height, tile_width, dtype_size, config) + 3 * tile_height * tile_width * 4
    return request.num_images * (tile + 3 * request.height * request.width * 4)
