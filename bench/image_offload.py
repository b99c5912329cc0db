"""Image, offloaded: ours under ``--vram-budget`` against resident, and against stock offload.

On CUDA each budget (default 8 and 12 GB, full model in bf16 for ``--size real``) runs our
``registry.run`` with the manager's budget set, against ours with no budget and against stock
``enable_model_cpu_offload()`` on the same modules (stock anchor on an H100: 8.75 s offloaded
against 3.6 s resident). Goal: ours offloaded within 1.3x of resident. On the CPU stock offload
cannot run (diffusers 0.42 raises "requires accelerator"), so the comparison is ours offloaded
against ours resident, at a budget computed from the tiny sizes that forces eviction every run.

SD3.5 Medium and SDXL (``sd_models``) get the same comparison, each on its own Studio, against
stock ``enable_model_cpu_offload()`` of ``StableDiffusion3Pipeline`` / ``StableDiffusionXLPipeline``
on CUDA (``bench.stock_sd``); the CPU budget of each fits its largest stage alone (the components
one stage holds at once, with the working memory they asked for), so every run evicts.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

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
from bench.stock_sd import StockSd, components, sd_request, stages

logger = logging.getLogger(__name__)

GB = 1024**3
GOAL = 1.3
STOCK_NEEDS_CUDA = "stock enable_model_cpu_offload() needs an accelerator (diffusers 0.42 raises without one)"


def forcing_budget(studio: Any, request: Any) -> int:
    """Bytes where the decoder fits alone but not beside the prior, so every run evicts.

    The same window as the tests' ``tight_budget_bytes``: the manager's need for the decoder is
    its size plus its working memory plus a reserve that is a fraction of the budget.
    """
    from backends.cascade.stages import working_bytes
    from backends.runtime.memory import RESERVE_FRACTION

    manager = studio.manager
    modules = cascade_modules(manager)
    dtype_size = torch.finfo(modules["prior"].dtype).bits // 8
    work = working_bytes(request, dtype_size, {stage: m.config for stage, m in modules.items()})
    prior, decoder = manager.component("cascade.prior").size, manager.component("cascade.decoder").size
    return int((decoder + work["decoder"] + prior / 2) / (1 - RESERVE_FRACTION))


def forcing_sd_budget(studio: Any, model: str) -> int:
    """Bytes where the largest stage of ``model``'s job fits alone (its components, the working
    memory they asked for in the resident run, and the reserve), so that every run evicts: on the
    tiny models the VAE decode's working memory is more than all the weights together."""
    from backends.runtime.memory import RESERVE_FRACTION

    manager = studio.manager
    working = manager.largest_working()
    need = max(sum(manager.component(name).size for name in held) + sum(working.get(name, 0) for name in asking)
               for held, asking in stages(studio, model))
    # 2 % over the bare need: the reserve is a fraction of the budget, and sizes are rounded.
    return int(need / (1 - RESERVE_FRACTION) * 1.02)


def placements(studio: Any) -> dict[str, str]:
    """Where each component is now (``/status``'s placement)."""
    return {s.name: s.placement for s in studio.manager.statuses()}


def compare(options: BenchOptions, studio: Any, ours: Callable[[], Any], used: list[str], forcing: Callable[[], int],
            stock_pipes: Callable[[], Any], run_stock: Callable[[Any], Any]) -> dict[str, Any]:
    """Ours resident, under each budget, and stock offload where it can run; the shape of one entry.

    Args:
        ours: our job (it has run once, so everything is loaded).
        used: the components the job uses (the others are never loaded, so not "evicted").
        forcing: the CPU budget that forces eviction (called only when no budget is given).
        stock_pipes: builds the stock pipelines over the loaded modules (CUDA only).
        run_stock: one stock job on them.
    """
    manager = studio.manager
    resident = measure({"ours_resident": ours}, options)["ours_resident"]
    if options.vram_budgets_gb:
        budgets = [int(gb * GB) for gb in options.vram_budgets_gb]
    elif options.device.type == "cuda":
        budgets = [8 * GB, 12 * GB]
    else:
        budgets = [forcing()]
    rows = []
    for budget in budgets:
        manager.budget_bytes = budget
        manager.evict_all()
        figures = measure({"ours": ours}, options)["ours"]
        where = placements(studio)
        rows.append({"budget_bytes": budget, **figures, "ratio_to_resident": figures["median_s"] / resident["median_s"],
                     "evicted": sorted(name for name in used if where[name] != "gpu"), "placements": where})
    manager.budget_bytes = None
    manager.evict_all()
    stock: dict[str, Any] | None = None
    if options.device.type == "cuda":
        pipes = stock_pipes()
        pipes.enable_model_cpu_offload(options.device)
        stock = measure({"stock": lambda: run_stock(pipes)}, options)["stock"]
        pipes.remove_offload()
    for row in rows:
        row["ratio_to_stock_offload"] = row["median_s"] / stock["median_s"] if stock else None
    manager.unload("all")
    return {"ours_resident": resident, "budgets": rows, "stock_offload": stock,
            **({"stock_offload_note": STOCK_NEEDS_CUDA} if stock is None else {})}


def run_sd_model(options: BenchOptions, model: str) -> dict[str, Any]:
    """One SD model's entry of ``sd_models``, on its own Studio."""
    studio = make_studio(options)
    request = sd_request(options, studio, model)
    task = studio.registry.model_task(model, "text_to_image")
    ours = lambda: studio.registry.run(task, request, no_progress)  # noqa: E731
    ours()  # load everything the job uses
    entry = compare(options, studio, ours, components(studio, model), lambda: forcing_sd_budget(studio, model),
                    lambda: StockSd(studio, model), lambda pipes: pipes.run(request))
    return {"family": studio.registry.models()[model], "variant": model, "task": task, **entry}


def run(options: BenchOptions) -> dict[str, Any]:
    """Stable Cascade resident, each budget, and stock offload where it can run; then each SD model."""
    variant = "full" if options.size == "real" else "tiny"
    studio = make_studio(options, variant=variant)
    request = image_request(options)
    ours = lambda: studio.registry.run("text_to_image", request, no_progress)  # noqa: E731
    ours()  # load everything
    backend = studio.registry.backend("cascade")
    entry = compare(options, studio, ours, backend.component_names(), lambda: forcing_budget(studio, request),
                    lambda: StockCascade(backend, cascade_modules(studio.manager)), lambda pipes: pipes.run(request))
    sd_entries = [run_sd_model(options, model) for model in SD_MODELS]
    return {"scenario": "image_offload", "device": device_name(options.device), "size": options.size,
            "variant": variant, "runs": options.runs, "warmup": options.warmup, "goal_ratio_to_resident_max": GOAL,
            **entry, "sd_models": sd_entries, "process_peak_rss_bytes": process_peak_rss_bytes(),
            **({"memory_note": CPU_MEMORY_NOTE} if options.device.type == "cpu" else {})}


def _rows(model: str, entry: dict[str, Any]) -> list[list[str]]:
    """One entry's table rows: resident, each budget, stock offload."""
    resident = entry["ours_resident"]
    rows = [[model, "ours resident", "none", f"{resident['median_s']:.3f}", "1.000", "",
             megabytes(resident["peak_memory_bytes"]), ""]]
    for row in entry["budgets"]:
        versus = "n/a" if row["ratio_to_stock_offload"] is None else f"{row['ratio_to_stock_offload']:.3f}"
        rows.append([model, "ours offloaded", f"{row['budget_bytes'] / GB:.3f} GB", f"{row['median_s']:.3f}",
                     f"{row['ratio_to_resident']:.3f}", versus, megabytes(row["peak_memory_bytes"]),
                     ", ".join(name.split(".", 1)[-1] for name in row["evicted"]) or "none"])
    stock = entry["stock_offload"]
    if stock is not None:
        rows.append([model, "stock cpu offload", "-", f"{stock['median_s']:.3f}",
                     f"{stock['median_s'] / resident['median_s']:.3f}", "1.000", megabytes(stock["peak_memory_bytes"]),
                     ""])
    return rows


def report(result: dict[str, Any]) -> str:
    """The printed table."""
    rows = [["model", "variant", "budget", "seconds", "vs resident", "vs stock offload", "peak (MB)",
             "evicted after run"]]
    rows += _rows(f"cascade {result['variant']}", result)
    for entry in result.get("sd_models", []):
        rows += _rows(entry["variant"], entry)
    head = (f"image_offload: text-to-image on {result['device']}; median of {result['runs']} runs "
            f"(goal offloaded/resident <= {result['goal_ratio_to_resident_max']})")
    lines = [head, format_table(rows)]
    if result["stock_offload"] is None:
        lines.append(f"stock: {result['stock_offload_note']}")
    return "\n".join(lines)
