"""What every scenario shares: the options, timing, memory readings and the printed table."""

from __future__ import annotations

import logging
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchOptions:
    """The command line, as every scenario reads it."""

    #: Where the models run.
    device: torch.device
    #: "tiny" (the tiny random-weight models) or "real" (real architectures, random weights).
    size: str
    #: Timed runs per variant after the warm-up; the median is reported.
    runs: int
    #: Untimed runs per variant first (allocator, kernels and caches settle).
    warmup: int
    #: New tokens per chat reply.
    tokens: int
    #: Where tiny models are built (``LoadContext.cache_dir``).
    cache_dir: Path
    #: ``--vram-budget`` values in GB for the offload scenario; empty: 8 and 12 on CUDA, and on
    #: the CPU one computed from the tiny sizes so that it forces eviction.
    vram_budgets_gb: tuple[float, ...] = ()
    #: ``--compile``: also run the regional-compilation scenario.
    compile: bool = False


#: Said in the JSON wherever a CPU figure is null: torch's CPU allocations bypass tracemalloc,
#: and RSS moves with the allocator's caching, not with one run's peak.
CPU_MEMORY_NOTE = ("peak memory is tracked on CUDA only (torch.cuda.max_memory_allocated); on the CPU "
                   "see process_peak_rss_bytes, the whole process's peak")


def measure(calls: dict[str, Callable[[], Any]], options: BenchOptions) -> dict[str, dict[str, Any]]:
    """Warm each call up, then time them interleaved run by run (drift hits all alike).

    Returns, per call: ``median_s``, ``runs_s`` and ``peak_memory_bytes`` (CUDA: the largest
    peak over its runs; CPU: None, see ``CPU_MEMORY_NOTE``).
    """
    for _ in range(options.warmup):
        for call in calls.values():
            call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    peaks: dict[str, int | None] = {name: None for name in calls}
    for _ in range(options.runs):
        for name, call in calls.items():
            reset_peak(options.device)
            seconds[name].append(timed(call, options.device)[0])
            peak = peak_bytes(options.device)
            if peak is not None:
                peaks[name] = max(peaks[name] or 0, peak)
    return {name: {"median_s": median(seconds[name]), "runs_s": [round(s, 4) for s in seconds[name]],
                   "peak_memory_bytes": peaks[name]} for name in calls}


def megabytes(value: int | None) -> str:
    """A table cell: MB, or n/a for a figure not measured."""
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds ``fn`` takes, GPU work included, and its result."""
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - started, result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    """Peak memory torch allocated on the GPU since ``reset_peak``; None on the CPU, where
    allocations are not tracked per variant (see ``process_peak_rss_bytes``)."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def process_peak_rss_bytes() -> int:
    """The whole process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, a rule under the header row."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
