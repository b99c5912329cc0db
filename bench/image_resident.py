"""Image, all resident: our ``registry.run`` text-to-image against the stock diffusers pipelines.

Both run the same loaded modules with no budget, so every component stays on the device and the
ratio is pure per-step overhead. Goal: ours/stock <= 1.02. Stable Cascade (``variants``):
``StableCascadePriorPipeline`` + ``StableCascadeDecoderPipeline`` (``bench.stock_cascade``);
SD3.5 Medium and SDXL (``sd_models``): ``StableDiffusion3Pipeline`` and
``StableDiffusionXLPipeline`` called directly (``bench.stock_sd``), and each row also says whether
the images are pixel-identical. ``--size tiny``: the tiny models at the tiny preset's defaults
(256²; Cascade 4 + 3 steps, Medium 4, SDXL 3). ``--size real`` (CUDA): Cascade lite and full at
1024², 20 + 10 steps (stock anchor: 2.58 s and 3.6-4.7 s on an H100); Medium (T5 off) and SDXL
at 1024², 20 steps; bf16, random weights.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
import torch

from bench.common import (
    CPU_MEMORY_NOTE,
    BenchOptions,
    device_name,
    format_table,
    measure,
    megabytes,
    process_peak_rss_bytes,
)
from bench.models import cascade_modules, image_request, make_studio, no_progress
from bench.sd_models import SD_MODELS
from bench.stock_cascade import StockCascade
from bench.stock_sd import StockSd, components, describe, sd_request

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
        "family": "cascade",
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


def run_sd_model(options: BenchOptions, model: str) -> dict[str, Any]:
    """Ours against ``StockSd`` for one SD model on a freshly built Studio; the modules are dropped afterwards."""
    studio = make_studio(options)
    request = sd_request(options, studio, model)
    task = studio.registry.model_task(model, "text_to_image")
    ours = lambda: studio.registry.run(task, request, no_progress)  # noqa: E731
    first = ours()  # loads (or builds) every component the job uses
    manager = studio.manager
    names = components(studio, model)
    with contextlib.ExitStack() as held:
        for name in names:  # resident for the whole comparison, as for Cascade
            held.enter_context(manager.use(name))
        stock = StockSd(studio, model)
        latents, images = stock.run(request)
        figures = measure({"ours": ours, "stock": lambda: stock.run(request)}, options)
    loaded = {name: manager.component(name).home.module for name in names}
    result = {
        "family": studio.registry.models()[model],
        "variant": model,
        "task": task,
        "dtype": str(loaded[names[-2]].dtype).split(".")[-1],  # the transformer's or UNet's
        "parameters_m": {name.split(".", 1)[1]: round(sum(p.numel() for p in m.parameters()) / 1e6, 1)
                         for name, m in loaded.items()},
        "request": describe(request),
        **figures,
        "ratio": figures["ours"]["median_s"] / figures["stock"]["median_s"],
        "same_latents": bool(torch.equal(first.latents, latents.cpu())),
        "same_images": len(first.images) == len(images) and all(
            np.array_equal(np.asarray(mine), np.asarray(theirs)) for mine, theirs in zip(first.images, images)),
    }
    manager.unload("all")
    return result


def run(options: BenchOptions) -> dict[str, Any]:
    """Every Cascade variant of this size, then each SD model; the JSON keys are in ``bench/README.md``."""
    results = [run_variant(options, variant) for variant in variants(options)]
    sd_rows = [run_sd_model(options, model) for model in SD_MODELS]
    return {"scenario": "image_resident", "device": device_name(options.device), "size": options.size,
            "runs": options.runs, "warmup": options.warmup, "goal_ratio_max": GOAL, "variants": results,
            "sd_models": sd_rows,
            "process_peak_rss_bytes": process_peak_rss_bytes(),
            **({"memory_note": CPU_MEMORY_NOTE} if options.device.type == "cpu" else {})}


def report(result: dict[str, Any]) -> str:
    """The printed table."""
    rows = [["model", "ours (s)", "stock (s)", "ours/stock", "peak ours (MB)", "peak stock (MB)", "same latents",
             "same images"]]
    yes = {True: "yes", False: "NO", None: "n/a"}
    for v in [*result["variants"], *result.get("sd_models", [])]:
        name = v["variant"] if v.get("family", "cascade") != "cascade" else f"cascade {v['variant']}"
        rows.append([name, f"{v['ours']['median_s']:.3f}", f"{v['stock']['median_s']:.3f}",
                     f"{v['ratio']:.3f}", megabytes(v["ours"]["peak_memory_bytes"]),
                     megabytes(v["stock"]["peak_memory_bytes"]), yes[v["same_latents"]], yes[v.get("same_images")]])
    head = (f"image_resident: text-to-image, all resident, on {result['device']}; median of "
            f"{result['runs']} runs (goal ours/stock <= {result['goal_ratio_max']})")
    return "\n".join([head, format_table(rows)])
