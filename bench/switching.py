"""Switching: Image -> Video -> Image under a budget that fits one family at a time.

What a user waits for when going back to the Image tab after a video: the manager must evict
the SVD modules and put the Stable Cascade prior back (7.2 GB in bf16 for the full model; goal
<= 0.3 s on an H100, where a pinned copy at 55 GB/s is the floor of about 0.13 s). We time the
manager's placement of the prior right after each video run (``manager.use`` with the image
request's working memory, which is what the next image run would do first), and check from
``Component.loads`` that nothing was read from disk again: evicted weights stay in RAM.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from bench.common import BenchOptions, device_name, format_table, median, synchronize, timed
from bench.models import component_loads, image_request, make_studio, no_progress, video_request

logger = logging.getLogger(__name__)

GB = 1024**3
PRIOR = "cascade.prior"
GOAL_S = 0.3


def one_family_budget(sizes: dict[str, int]) -> int:
    """The larger family plus half the smaller one (and the manager's 5 % reserve): either
    family fits, both do not, so every switch must evict."""
    from backends.runtime.memory import RESERVE_FRACTION

    families = [sum(v for k, v in sizes.items() if k.startswith(prefix)) for prefix in ("cascade.", "svd.")]
    return int((max(families) + min(families) / 2) / (1 - RESERVE_FRACTION))


def run(options: BenchOptions) -> dict[str, Any]:
    """Warm both families up without a budget, then time ``runs`` Image -> Video -> Image cycles."""
    from backends.cascade.stages import working_bytes

    studio = make_studio(options, variant="full")
    manager, registry = studio.manager, studio.registry
    image, video = image_request(options), video_request(options)
    registry.run("text_to_image", image, no_progress)
    registry.run("image_to_video", video, no_progress)
    sizes = {s.name: s.bytes for s in manager.statuses()}
    budget = one_family_budget(sizes)
    manager.budget_bytes = budget
    manager.evict_all()
    loads_before = component_loads(manager)

    def prior_need(module: torch.nn.Module) -> int:
        return working_bytes(image, torch.finfo(module.dtype).bits // 8, {"prior": module.config})["prior"]

    def restore() -> None:
        with manager.use(PRIOR, prior_need):
            synchronize(options.device)

    cycles: dict[str, list[float]] = {"image_s": [], "video_s": [], "restore_prior_s": [], "image_after_video_s": []}
    resident_after_video: list[list[str]] = []
    registry.run("text_to_image", image, no_progress)
    for _ in range(options.warmup + options.runs):
        seconds = {"image_s": timed(lambda: registry.run("text_to_image", image, no_progress), options.device)[0],
                   "video_s": timed(lambda: registry.run("image_to_video", video, no_progress), options.device)[0]}
        resident_after_video.append(sorted(s.name for s in manager.statuses() if s.placement == "gpu"))
        seconds["restore_prior_s"] = timed(restore, options.device)[0]
        seconds["image_after_video_s"] = timed(lambda: registry.run("text_to_image", image, no_progress),
                                               options.device)[0]
        for key, value in seconds.items():
            cycles[key].append(value)
    loads_after = component_loads(manager)
    reloaded = sorted(name for name, count in loads_after.items() if count != loads_before.get(name, 0))
    manager.unload("all")
    skip = options.warmup
    return {"scenario": "switching", "device": device_name(options.device), "size": options.size,
            "runs": options.runs, "warmup": options.warmup, "budget_bytes": budget, "component_bytes": sizes,
            "prior_bytes": sizes.get(PRIOR), "goal_restore_prior_s_max": GOAL_S,
            **{key: median(values[skip:]) for key, values in cycles.items()},
            "runs_s": {key: [round(v, 4) for v in values[skip:]] for key, values in cycles.items()},
            "resident_after_video": resident_after_video[-1],
            "prior_evicted_by_video": PRIOR not in resident_after_video[-1],
            "loads": loads_after, "reloaded_from_disk": reloaded, "no_reload": not reloaded}


def report(result: dict[str, Any]) -> str:
    """The printed table."""
    rows = [["step", "seconds (median)"],
            ["image (warm, prior resident)", f"{result['image_s']:.3f}"],
            ["video (evicts Stable Cascade)", f"{result['video_s']:.3f}"],
            ["restore prior (make room + upload)", f"{result['restore_prior_s']:.4f}"],
            ["image after video (prior restored)", f"{result['image_after_video_s']:.3f}"]]
    head = (f"switching: Image -> Video -> Image on {result['device']}, budget {result['budget_bytes'] / GB:.3f} GB "
            f"(prior {(result['prior_bytes'] or 0) / 2**20:.1f} MB); median of {result['runs']} cycles "
            f"(goal restore <= {result['goal_restore_prior_s_max']} s on an H100)")
    tail = (f"prior evicted by the video run: {'yes' if result['prior_evicted_by_video'] else 'NO'}; "
            f"reloaded from disk: {', '.join(result['reloaded_from_disk']) or 'nothing'}")
    return "\n".join([head, format_table(rows), tail])
