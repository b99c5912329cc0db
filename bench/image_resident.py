"""Image, all resident: our ``registry.run("text_to_image")`` against the stock diffusers pipelines.

Both run the same loaded modules (``bench.stock_cascade``) with no budget, so every component
stays on the device and the ratio is pure per-step overhead. Goal: ours/stock <= 1.02.
``--size tiny``: the tiny Stable Cascade at 256², 4 + 3 steps. ``--size real`` (CUDA): lite and
full at 1024², 20 + 10 steps, bf16, random weights (stock anchor: 2.58 s and 3.6-4.7 s on an H100).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

from bench.common import (CPU_MEMORY_NOTE, BenchOptions, device_name, format_table, measure, megabytes,
                          process_peak_rss_bytes)
from bench.models import cascade_modules, image_request, make_studio, no_progress
from bench.stock_cascade import StockCascade

logger = logging.getLogger(__name__)

GOAL = 1.02


def variants(options: BenchOptions) -> list[str]:
    """Model variants this size runs: the tiny model, or real lite and full."""
    return ["lite", "full"] if options.size == "real" else ["tiny"]


def run_variant(options: BenchOptions, variant: str) -> dict[str, Any]:
    """Ours against stock on one freshly built Studio; the modules are dropped afterwards."""
    studio = make_studio(options, variant=variant)
    request = image_request(options)
    ours = lambda: studio.registry.run("text_to_image", request, no_progress)  # noqa: E731
    first = ours()  # loads (or builds) every component and places it
    manager = studio.manager
    backend = studio.registry.backend("cascade")
    names = backend.component_names()
    with contextlib.ExitStack() as held:
        # Held in use: resident for the whole comparison, whatever the stock path does.
        for name in names:
            held.enter_context(manager.use(name))
        stock = StockCascade(backend, cascade_modules(manager))
        latents, _ = stock.run(request)
        figures = measure({"ours": ours, "stock": lambda: stock.run(request)}, options)
    modules = cascade_modules(manager)
    result = {
        "variant": variant,
        "dtype": str(modules["prior"].dtype).split(".")[-1],
        "parameters_m": {stage: round(sum(p.numel() for p in m.parameters()) / 1e6, 1)
                         for stage, m in modules.items()},
        "request": {key: getattr(request, key) for key in ("width", "height", "prior_steps", "decoder_steps",
                                                          "prior_guidance", "decoder_guidance", "num_images")},
        **figures,
        "ratio": figures["ours"]["median_s"] / figures["stock"]["median_s"],
        "same_latents": bool(torch.equal(first.stage_c_latents, latents.cpu())),
    }
    manager.unload("all")
    return result


def run(options: BenchOptions) -> dict[str, Any]:
    """Every variant of this size; the JSON keys are described in ``bench/README.md``."""
    results = [run_variant(options, variant) for variant in variants(options)]
    return {"scenario": "image_resident", "device": device_name(options.device), "size": options.size,
            "runs": options.runs, "warmup": options.warmup, "goal_ratio_max": GOAL, "variants": results,
            "process_peak_rss_bytes": process_peak_rss_bytes(),
            **({"memory_note": CPU_MEMORY_NOTE} if options.device.type == "cpu" else {})}


def report(result: dict[str, Any]) -> str:
    """The printed table."""
    rows = [["variant", "ours (s)", "stock (s)", "ours/stock", "peak ours (MB)", "peak stock (MB)", "same latents"]]
    for v in result["variants"]:
        rows.append([v["variant"], f"{v['ours']['median_s']:.3f}", f"{v['stock']['median_s']:.3f}",
                     f"{v['ratio']:.3f}", megabytes(v["ours"]["peak_memory_bytes"]),
                     megabytes(v["stock"]["peak_memory_bytes"]), "yes" if v["same_latents"] else "NO"])
    head = (f"image_resident: Stable Cascade text-to-image, all resident, on {result['device']}; median of "
            f"{result['runs']} runs (goal ours/stock <= {result['goal_ratio_max']})")
    return "\n".join([head, format_table(rows)])
