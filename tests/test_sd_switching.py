"""Switching image models under a budget too small for them all: Cascade → SD3.5 → SDXL → Cascade.

Each switch evicts the previous family to RAM; coming back reuses that copy, so nothing is read
from disk twice and the first and last Cascade images are the same pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from backends.cascade.requests import TextToImageRequest
from backends.families import FAMILIES
from backends.runtime.image_requests import SdTextToImageRequest
from backends.runtime.studio import Studio, StudioConfig

OFFERED = ["sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium", "sdxl"]


def jobs() -> list[tuple[str, Any]]:
    cascade = TextToImageRequest.build("a red lighthouse", "", 256, 256, 3, 2, 4.0, 0.0, 1, 7)

    def sd(model: str) -> SdTextToImageRequest:
        return SdTextToImageRequest.build("a red lighthouse", "", 256, 256, 2, 3.0, 1, 7, model, offered=OFFERED,
                                          default_model="sdxl")

    return [("text_to_image", cascade), ("sd3_text_to_image", sd("sd3.5-medium")),
            ("sdxl_text_to_image", sd("sdxl")), ("text_to_image", cascade)]


def family_bytes(studio: Studio) -> dict[str, int]:
    totals: dict[str, int] = {}
    for status in studio.manager.statuses():
        if status.placement != "disk":
            family = status.name.split(".", 1)[0]
            totals[family] = totals.get(family, 0) + status.bytes
    return totals


def run_all(studio: Studio) -> list[Any]:
    return [studio.registry.run(task, request, lambda *_: None) for task, request in jobs()]


def test_switching_families_under_a_one_family_budget_reloads_nothing(tiny_cache: Path, tmp_path: Path) -> None:
    def make(budget: int | None) -> Studio:
        return Studio(StudioConfig(preset="tiny", vram_budget_bytes=budget, cache_dir=tiny_cache,
                                   outputs_dir=tmp_path / "outputs"), FAMILIES)

    free = make(None)
    run_all(free)
    sizes = family_bytes(free)
    assert set(sizes) == {"cascade", "sd3", "sdxl"}
    working = free.manager.largest_working()
    need = max(s.bytes + working.get(s.name, 0) for s in free.manager.statuses() if s.placement != "disk")
    # Room for the component that needs most (its weights and working memory, beside the
    # manager's 5 % reserve, with some slack), not for all three families' weights at once.
    budget = int(need / 0.95 * 1.15)
    assert budget < sum(sizes.values()), (budget, sizes)

    studio = make(budget)
    evicted: set[str] = set()
    results = []
    for task, request in jobs():
        results.append(studio.registry.run(task, request, lambda *_: None))
        evicted |= {s.name for s in studio.manager.statuses() if s.placement == "cpu"}
    assert evicted, "the budget never made a family give way"
    loaded = [s.name for s in studio.manager.statuses() if s.placement != "disk"]
    assert loaded and all(studio.manager.component(name).loads == 1 for name in loaded), {
        name: studio.manager.component(name).loads for name in loaded}
    first, last = results[0].images[0], results[-1].images[0]
    assert np.array_equal(np.asarray(first), np.asarray(last))
    # The same images as without a budget: placement never changes pixels.
    for budgeted, unbudgeted in zip(results, run_all(free)):
        assert np.array_equal(np.asarray(budgeted.images[0]), np.asarray(unbudgeted.images[0]))
