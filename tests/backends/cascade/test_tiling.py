"""Stage A decoded in tiles: the grid, the blend, the estimate, and a budget that used to refuse it.

Measured on the tiny VQGAN (float32, CPU), tiled against whole decodes of the same latents (run
with ``-s`` to see the figures again):
- 256 px in 36 tiles of 96 px (the smallest tiles): float max 8.9e-08, mean 9.4e-09; 8-bit max 1,
  mean below 1e-4. In 4 tiles of 160 px: float max 3.0e-08, mean 9.5e-11; 8-bit max 0.
- on the seams as elsewhere: float max 8.9e-08 and mean 1.8e-08 in both places.
- without the halos (a plain feathered blend over the same overlap): 8-bit max 13, all of it on
  the seams.
- the whole app at 512 px under ``--vram-budget 0.02``: 4 tiles of 288 px, 8-bit max 0 and mean
  0 against the unbudgeted run.
"""

from __future__ import annotations

import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from backends.cascade import tiling
from backends.cascade.backend import CascadeBackend
from backends.cascade.stages import VQGAN, ImageResult, vqgan_tile_bytes, working_bytes
from backends.families import TINY, load_context
from backends.runtime.loading import LoadContext
from backends.runtime.memory import MemoryManager
from backends.runtime.offload import module_bytes
from backends.runtime.probe import GB, FakeProbe, parse_budget_gb
from backends.runtime.progress import no_progress
from tests.backends.cascade.test_backend import make_request, tiny_settings

#: The budget that refused stage A at 512 px before tiling ("cascade.vqgan needs 28.1 MB even
#: when streamed block by block").
TIGHT_GB = 0.02


class LiveTensorPeak(TorchDispatchMode):
    """The peak bytes of tensors created inside the block and still alive (exact on the CPU).

    Each op's new output storages are counted until the last tensor viewing them is collected;
    tensors that existed before (weights, inputs) and in-place results are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, live tensors]
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        before = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or (key in before and key not in self.live):
                continue
            if key in self.live:
                self.live[key][1] += 1
            else:
                self.live[key] = [storage.nbytes(), 1]
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            weakref.finalize(tensor, self._release, key)
        return out


@pytest.fixture(scope="module")
def vqgan(tiny_cache: Path) -> torch.nn.Module:
    from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel

    return PaellaVQModel.from_pretrained(TINY.ensure("cascade", tiny_cache) / "vqgan").eval()


@pytest.fixture(scope="module")
def latents(vqgan: torch.nn.Module) -> torch.Tensor:
    """Stage A input for a 256 px picture with edges everywhere: discs on a gradient."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 256), torch.linspace(0, 1, 256), indexing="ij")
    discs = ((torch.sin(x * 40) * torch.sin(y * 31)) > 0.3).float()
    picture = torch.stack([x, y * discs, 1 - discs * x]).unsqueeze(0)
    with torch.inference_mode():
        return vqgan.encode(picture).latents


def decode(vqgan: torch.nn.Module, latents: torch.Tensor, tiles: tiling.TileGrid | None) -> torch.Tensor:
    with torch.inference_mode():
        if tiles is None:
            return vqgan.decode(latents).sample.float()
        return tiling.decode_tiled(vqgan, latents, tiles)


def eight_bit(pixels: torch.Tensor) -> np.ndarray:
    """As the backend rounds them."""
    return (pixels.clamp(0, 1).numpy() * 255).round().astype(np.int16)


def seam_mask(tiles: tiling.TileGrid, height: int, width: int) -> torch.Tensor:
    """True on the pixels where tiles cross-fade, widened by the halo on both sides."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for axis in (0, 1):
        for start, end in tiles.ramps(axis):
            span = slice(max(start - 8, 0), end + 8)
            if axis == 0:
                mask[span, :] = True
            else:
                mask[:, span] = True
    return mask


# ----- the grid ----------------------------------------------------------------------------
@pytest.mark.parametrize("height, width, tile", [(64, 64, 24), (128, 96, 40), (100, 37, 32), (32, 64, 64)])
def test_tiles_cover_the_latent_and_their_weights_add_up_to_one(vqgan: torch.nn.Module, height: int,
                                                                 width: int, tile: int) -> None:
    tiles = tiling.grid(height, width, tile, vqgan.config)
    shared, scale = tiling.overlap(vqgan.config), tiles.scale
    for axis, (spans, size) in enumerate(((tiles.rows, height), (tiles.cols, width))):
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert all(end - start <= tile for start, end in spans)
        assert all(before[1] - after[0] >= shared for before, after in zip(spans, spans[1:]))
        total = torch.zeros(size * scale)
        for index, (start, end) in enumerate(spans):
            weight = tiles.weights(axis, index)
            total[start * scale:end * scale] += weight
            halo = tiling.context_pixels(vqgan.config) * scale
            if index > 0:  # nothing from the pixels the tile's own edge may spoil
                assert not weight[:halo].any()
            if index < len(spans) - 1:
                assert not weight[-halo:].any()
        assert torch.equal(total, torch.ones_like(total))


def test_choose_grid_takes_the_largest_tiles_that_fit(vqgan: torch.nn.Module) -> None:
    cap = 48 * 48

    def fits(tiles: tiling.TileGrid) -> bool:
        return tiles.tile_height * tiles.tile_width <= cap

    chosen = tiling.choose_grid(128, 128, vqgan.config, fits)
    assert fits(chosen) and chosen.count > 1
    larger = [tiling.grid(128, 128, side, vqgan.config) for side in tiling.tile_sides(128, 128, vqgan.config)]
    assert all(not fits(tiles) or tiles.count >= chosen.count for tiles in larger)
    floor = tiling.smallest_tile(vqgan.config)
    assert tiling.choose_grid(128, 128, vqgan.config, lambda tiles: False) == tiling.grid(128, 128, floor,
                                                                                         vqgan.config)


def test_a_tile_below_the_overlap_is_refused(vqgan: torch.nn.Module) -> None:
    floor = tiling.smallest_tile(vqgan.config)
    with pytest.raises(ValueError, match=f"tile must be at least {floor}"):
        tiling.grid(64, 64, floor - 1, vqgan.config)


# ----- the decode --------------------------------------------------------------------------
@pytest.mark.parametrize("tile", [24, 40])
def test_tiled_decode_matches_the_whole_one(vqgan: torch.nn.Module, latents: torch.Tensor, tile: int) -> None:
    """Measured: float max 8.9e-08 / 3.0e-08, 8-bit max 1 / 0 (tiles of 24 / 40 latent pixels)."""
    tiles = tiling.grid(*latents.shape[-2:], tile, vqgan.config)
    assert tiles.count > 1
    whole, tiled = decode(vqgan, latents, None), decode(vqgan, latents, tiles)
    assert tiled.shape == whole.shape == (1, 3, 256, 256)
    difference = (tiled - whole).abs()
    assert difference.max() < 1e-5, f"{tiles.describe()}: max {difference.max():.2e}"
    assert difference.mean() < 1e-7, f"{tiles.describe()}: mean {difference.mean():.2e}"
    pixels = np.abs(eight_bit(tiled) - eight_bit(whole))
    print(f"{tiles.describe()}: float max {difference.max():.1e} mean {difference.mean():.1e}; "
          f"8-bit max {pixels.max()} mean {pixels.mean():.4f}")
    assert pixels.max() <= 1 and pixels.mean() < 0.001, f"8-bit max {pixels.max()}, mean {pixels.mean():.4f}"


def test_no_seam_along_the_tile_borders(vqgan: torch.nn.Module, latents: torch.Tensor) -> None:
    """The difference where tiles meet is no larger than elsewhere (both are float rounding)."""
    tiles = tiling.grid(*latents.shape[-2:], 24, vqgan.config)
    difference = (decode(vqgan, latents, tiles) - decode(vqgan, latents, None)).abs().amax(dim=(0, 1))
    seams = seam_mask(tiles, *difference.shape)
    assert seams.any() and not seams.all()
    on, off = difference[seams], difference[~seams]
    print(f"seams: max {on.max():.1e} mean {on.mean():.1e}; elsewhere: max {off.max():.1e} mean {off.mean():.1e}")
    assert on.max() <= max(off.max().item(), 1e-6), f"seams {on.max():.2e}, elsewhere {off.max():.2e}"


def test_the_halo_is_what_removes_the_seam(vqgan: torch.nn.Module, latents: torch.Tensor) -> None:
    """A plain feathered blend over the same overlap (no halo) leaves a seam the check above sees.

    Measured: 8-bit max 13; the mean difference on the seams is 5.9e5 times that elsewhere.
    """
    tiles = tiling.grid(*latents.shape[-2:], 24, vqgan.config)
    plain = tiling.TileGrid(tiles.rows, tiles.cols, tiling.overlap(vqgan.config), tiles.scale)
    whole = decode(vqgan, latents, None)
    blended = decode(vqgan, latents, plain)
    difference = (blended - whole).abs().amax(dim=(0, 1))
    seams = seam_mask(plain, *difference.shape)
    ratio = difference[seams].mean() / difference[~seams].mean()
    worst = np.abs(eight_bit(blended) - eight_bit(whole)).max()
    print(f"without halos: 8-bit max {worst}, {ratio:.0f}x the difference on the seams")
    assert ratio > 20 and worst >= 5


@pytest.mark.parametrize("tile", [None, 24, 40])
def test_the_working_estimate_covers_the_measured_peak(vqgan: torch.nn.Module, latents: torch.Tensor,
                                                       tile: int | None) -> None:
    """Live tensors at the peak of a 256 px decode against ``working_bytes`` / ``vqgan_tile_bytes``.

    Measured: 0.81 of the whole estimate, 0.87 and 0.82 of the two tile estimates.
    """
    job = make_request()
    tiles = None if tile is None else tiling.grid(*latents.shape[-2:], tile, vqgan.config)
    if tiles is None:
        estimate = working_bytes(job, 4, {"vqgan": vqgan.config})["vqgan"]
    else:
        estimate = vqgan_tile_bytes(job, tiles.tile_height * 4, tiles.tile_width * 4, 4, vqgan.config)
    scaled = latents
    peak = LiveTensorPeak()
    with torch.inference_mode(), peak:  # clamped as ``CascadeBackend._stage_a`` clamps
        pixels = vqgan.decode(scaled).sample.clamp(0, 1) if tiles is None else \
            tiling.decode_tiled(vqgan, scaled, tiles).clamp_(0, 1)
        del pixels
    assert 0.5 * estimate < peak.peak <= estimate, f"peak {peak.peak} bytes, estimate {estimate}"
    print(f"stage A {tiles.describe() if tiles else 'whole'}: peak {peak.peak / estimate:.2f} of the estimate")


# ----- through the backend and the real manager --------------------------------------------
@pytest.fixture(scope="module")
def ctx(tiny_cache: Path) -> LoadContext:
    return load_context(cache_dir=tiny_cache, offline=True)


@pytest.fixture(scope="module")
def unbudgeted(ctx: LoadContext) -> ImageResult:
    backend = CascadeBackend(tiny_settings(), MemoryManager(FakeProbe(device_total=16 * GB)), ctx)
    return backend.run("text_to_image", make_request(width=512, height=512), no_progress)


def test_an_unbudgeted_run_decodes_whole(unbudgeted: ImageResult) -> None:
    assert unbudgeted.info["stage_a_tiles"] == [1]
    assert not any("stage A" in notice for notice in unbudgeted.info["notices"])


def test_a_budget_that_refused_stage_a_now_tiles_it(ctx: LoadContext, unbudgeted: ImageResult) -> None:
    """512 px under 0.02 GB: the whole decode's need is over the budget; the run now completes.

    Measured: 4 tiles of 288 px, 8-bit max 0 and mean 0 against the unbudgeted run.
    """
    manager = MemoryManager(FakeProbe(device_total=16 * GB), budget_bytes=parse_budget_gb(TIGHT_GB))
    backend = CascadeBackend(tiny_settings(), manager, ctx)
    job = make_request(width=512, height=512)
    result = backend.run("text_to_image", job, no_progress)
    # What the manager was refusing: the whole decode beside the VQGAN's weights is over the budget.
    vqgan = manager.component(VQGAN).home.module  # type: ignore[union-attr]
    whole = working_bytes(job, 4, {"vqgan": vqgan.config})["vqgan"]
    assert whole > manager.room_beside(module_bytes(vqgan))
    (tiles,) = result.info["stage_a_tiles"]
    assert tiles > 1
    assert any(notice.startswith(f"stage A decoded in {tiles} tiles of") and "memory budget" in notice
               for notice in result.info["notices"]), result.info["notices"]
    assert result.images[0].size == (512, 512)
    difference = np.abs(np.asarray(result.images[0], dtype=np.int16) - np.asarray(unbudgeted.images[0], dtype=np.int16))
    print(f"{result.info['notices']}: 8-bit max {difference.max()}, mean {difference.mean():.4f}")
    assert difference.max() <= 1 and difference.mean() < 0.01, f"max {difference.max()}, mean {difference.mean():.4f}"


def test_every_image_of_a_batch_says_how_it_was_decoded(ctx: LoadContext) -> None:
    manager = MemoryManager(FakeProbe(device_total=16 * GB), budget_bytes=parse_budget_gb(TIGHT_GB))
    backend = CascadeBackend(tiny_settings(), manager, ctx)
    job = replace(make_request(width=512, height=512, num_images=2), decoder_steps=1, prior_steps=1)
    info = backend.run("text_to_image", job, no_progress).info
    assert len(info["stage_a_tiles"]) == 2 and min(info["stage_a_tiles"]) > 1
    assert sum("stage A decoded in" in notice for notice in info["notices"]) == 1  # one notice, not one per image
