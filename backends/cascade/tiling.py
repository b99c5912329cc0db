"""Stage A (Paella VQGAN) decoding in overlapping tiles, for budgets too small for one pass.

Why our own code: diffusers 0.42.1 tiles ``AutoencoderKL`` and its relatives (``enable_tiling``),
but ``PaellaVQModel`` has no tiling or slicing at all: its ``decode`` is one pass through
``up_blocks`` and ``out_block``.

Why the tiles join without a seam: every layer of Paella's decoder is local. Its LayerNorms
normalise each pixel over its channels (no GroupNorm, no attention), the mixing blocks' only
spatial step is a 3x3 depthwise convolution, and each extra level up-samples with one 4x4
stride-2 transposed convolution. So an output pixel depends only on latents at most
``context_pixels`` away. Each tile is decoded with that much extra latent ("halo") on every side
that borders another tile; the halo's pixels get no weight, and neighbouring tiles cross-fade over
a feathered linear ramp in the middle of their overlap. What both tiles give there is the whole
decode's value up to float rounding, so the ramp only hides that rounding. Without the halo, a
plain feathered blend mixes in the tile edges, which the decoder's replication padding gets
wrong. Measured against whole decodes at the smallest tiles: 13 levels of 255 along the seams
without the halo, 1 with it, on the tiny test model (``tests/backends/cascade/test_tiling.py``);
103 against 0 on the real-size model with random weights (160 px tiles).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from backends.runtime.offload import module_bytes
from backends.runtime.probe import format_bytes

logger = logging.getLogger(__name__)

#: Latent pixels over which two neighbouring tiles cross-fade, beyond both halos (16 px of image).
RAMP = 4
#: Latent pixels between the tile sides tried (32 px of image).
TILE_STEP = 8


def _get(config: Any, key: str) -> Any:
    return config[key] if isinstance(config, Mapping) else getattr(config, key)


def upscale(config: Any) -> int:
    """Image pixels per latent pixel: the pixel shuffle times one doubling per extra level (4)."""
    return _get(config, "up_down_scale_factor") * 2 ** (_get(config, "levels") - 1)


def context_pixels(config: Any) -> int:
    """How far (latent pixels) an output pixel looks: a bound on the decoder's receptive radius.

    Each bottleneck block's 3x3 depthwise convolution reaches one latent pixel further. Each later
    level adds a 4x4 stride-2 transposed convolution (one pixel at its input's scale) and one
    block (one pixel at twice that scale): 1.5 latent pixels for the second level (the only one
    in Stable Cascade), half as much for each level after it.
    """
    later = sum(1.5 / 2 ** (level - 1) for level in range(1, _get(config, "levels")))
    return _get(config, "bottleneck_blocks") + math.ceil(later)


def overlap(config: Any) -> int:
    """Latent pixels two neighbouring tiles share: both halos and the ramp between them."""
    return 2 * context_pixels(config) + RAMP


def smallest_tile(config: Any) -> int:
    """The smallest tile side (latent pixels) worth decoding: the overlap plus one step."""
    return math.ceil((overlap(config) + TILE_STEP) / TILE_STEP) * TILE_STEP


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one decode lie, in latent pixels (each span is start, end)."""

    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]
    #: Latent pixels each neighbour pair cross-fades over, centred in their overlap.
    ramp: int
    #: Image pixels per latent pixel.
    scale: int

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def tile_height(self) -> int:
        """Latent pixels a tile is high (all tiles of a grid are the same size)."""
        return self.rows[0][1] - self.rows[0][0]

    @property
    def tile_width(self) -> int:
        return self.cols[0][1] - self.cols[0][0]

    def describe(self) -> str:
        """E.g. ``4 tiles of 256x256 px``."""
        return f"{self.count} tiles of {self.tile_width * self.scale}x{self.tile_height * self.scale} px"

    def weights(self, axis: int, index: int) -> torch.Tensor:
        """The blend weight of tile ``index`` along ``axis`` (0 rows, 1 columns), per image pixel.

        Adjacent tiles' weights add up to exactly 1 (one is ``1 - w`` of the other's ramp), so
        the blend needs no division, and where one tile has weight 1 its pixels pass unchanged.
        """
        spans = self.rows if axis == 0 else self.cols
        ramps = self.ramps(axis)
        start, end = spans[index]
        pixels = torch.arange(start * self.scale, end * self.scale, dtype=torch.float32) + 0.5
        weight = torch.ones_like(pixels)
        if index > 0:
            weight *= self._rise(ramps[index - 1], pixels)
        if index < len(spans) - 1:
            weight *= 1 - self._rise(ramps[index], pixels)
        return weight

    def ramps(self, axis: int) -> list[tuple[int, int]]:
        """The image pixels (start, end) where neighbours cross-fade along ``axis``: the seams."""
        spans = self.rows if axis == 0 else self.cols
        starts = [(after[0] + (before[1] - after[0] - self.ramp) // 2) * self.scale
                  for before, after in zip(spans, spans[1:])]
        return [(start, start + self.ramp * self.scale) for start in starts]

    def _rise(self, ramp: tuple[int, int], pixels: torch.Tensor) -> torch.Tensor:
        """0 before a ramp, 1 after it, linear across it."""
        return ((pixels - ramp[0]) / (ramp[1] - ramp[0])).clamp(0, 1)


def _spans(size: int, tile: int, shared: int) -> tuple[tuple[int, int], ...]:
    """Tiles of at most ``tile`` latent pixels over ``size``, sharing at least ``shared``.

    The tiles are then made as small as their count allows (less to decode, same count) and
    spread evenly, so the last one ends at the edge.
    """
    if tile >= size:
        return ((0, size),)
    count = math.ceil((size - shared) / (tile - shared))
    tile = math.ceil((size - shared) / count) + shared
    starts = [round(index * (size - tile) / (count - 1)) for index in range(count)]
    return tuple((start, start + tile) for start in starts)


def grid(height: int, width: int, tile: int, config: Any) -> TileGrid:
    """The tile grid for a latent of ``height`` x ``width`` with tiles of at most ``tile`` a side.

    Raises:
        ValueError: ``tile`` is below ``smallest_tile(config)``.
    """
    floor = smallest_tile(config)
    if tile < floor:
        raise ValueError(f"tile must be at least {floor} latent pixels for this VQGAN, got {tile}")
    shared = overlap(config)
    return TileGrid(_spans(height, tile, shared), _spans(width, tile, shared), RAMP, upscale(config))


def tile_sides(height: int, width: int, config: Any) -> list[int]:
    """Tile sides to try, largest first, from one that covers the latent down to the smallest."""
    floor = smallest_tile(config)
    largest = max(math.ceil(max(height, width) / TILE_STEP) * TILE_STEP, floor)
    return list(range(largest, floor - 1, -TILE_STEP))


def choose_grid(height: int, width: int, config: Any, fits: Callable[[TileGrid], bool]) -> TileGrid:
    """The grid of the largest tiles for which ``fits`` holds; the smallest tiles if none does.

    Args:
        height: latent height.
        width: latent width.
        config: the VQGAN config.
        fits: whether a grid's working memory fits the room (the caller's estimate).
    """
    for side in tile_sides(height, width, config):
        tiles = grid(height, width, side, config)
        if fits(tiles):
            return tiles
    return tiles


def decode_tiled(vqgan: torch.nn.Module, latents: torch.Tensor, tiles: TileGrid) -> torch.Tensor:
    """Decode scaled latents (n, c, h, w) tile by tile; returns float32 pixels (n, 3, H, W).

    Same contract as ``vqgan.decode(latents).sample`` (unclamped), accumulated in float32 on the
    latents' device; only one tile's activations are alive at a time.
    """
    n, _, height, width = latents.shape
    scale = tiles.scale
    out = torch.zeros(n, vqgan.config.out_channels, height * scale, width * scale,
                      dtype=torch.float32, device=latents.device)
    for row, (top, bottom) in enumerate(tiles.rows):
        rise = tiles.weights(0, row).to(latents.device)
        for col, (left, right) in enumerate(tiles.cols):
            across = tiles.weights(1, col).to(latents.device)
            sample = vqgan.decode(latents[:, :, top:bottom, left:right].contiguous()).sample
            weight = rise[:, None] * across[None, :]
            out[:, :, top * scale:bottom * scale, left * scale:right * scale] += sample.float() * weight
            del sample
    return out


def tiling_report(decodes: Sequence[TileGrid | None]) -> tuple[list[int], list[str]]:
    """Tiles per image (1: decoded whole) for the info, and one notice per tiling used."""
    counts = [1 if tiles is None else tiles.count for tiles in decodes]
    used = dict.fromkeys(tiles.describe() for tiles in decodes if tiles is not None)
    return counts, [f"stage A decoded in {described} to fit the memory budget" for described in used]


def decode_within_budget(manager: Any, name: str, latents: torch.Tensor,
                         whole: Callable[[torch.nn.Module], int],
                         tile_bytes: Callable[[torch.nn.Module, TileGrid], int],
                         ) -> tuple[torch.Tensor, TileGrid | None]:
    """Decode stage B ``latents`` with the VQGAN ``manager`` lends as ``name``; pixels in [0, 1].

    Whole when its working memory (``whole``) fits the budget beside the VQGAN, else in the
    largest tiles that fit (``tile_bytes``); with no tile small enough, the manager's refusal
    names the memory. The choice is made again from the live free memory once the VQGAN is
    placed (as SVD chooses its forward chunking): components the manager could not evict leave
    less room. Returns the pixels and the grid used (None for a whole decode).
    """
    height, width = latents.shape[-2:]

    def tiles_within(module: torch.nn.Module, room: int) -> TileGrid | None:
        if whole(module) <= room:
            return None
        return choose_grid(height, width, module.config, lambda tiles: tile_bytes(module, tiles) <= room)

    def need(module: torch.nn.Module) -> int:
        tiles = tiles_within(module, manager.room_beside(module_bytes(module)))
        return whole(module) if tiles is None else tile_bytes(module, tiles)

    with manager.use(name, need) as vqgan, torch.inference_mode():
        tiles = tiles_within(vqgan, manager.usable_free())
        scaled = (vqgan.config.scale_factor * latents).to(manager.device, vqgan.dtype)
        if tiles is None:
            return vqgan.decode(scaled).sample.clamp(0, 1), None
        logger.info("stage A in %s (whole decode needs %s, %s usable)", tiles.describe(),
                    format_bytes(whole(vqgan)), format_bytes(max(manager.usable_free(), 0)))
        return decode_tiled(vqgan, scaled, tiles).clamp_(0, 1), tiles
