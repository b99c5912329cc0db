"""Real sizes: every family at its real architecture, random weights, through the app's own path.

``python -m bench --device cpu --size real [--quick] [--vram-budget 8] [--dtype auto]`` runs Stable
Cascade lite, SVD-XT, SV3D_p, the StableLM 2 1.6B shape, SD3.5 Medium and SDXL base one after
another, each through registry -> manager -> backend (``bench.models.make_studio`` registers the
real-size builders), at the smallest request that keeps the real layer shapes (``REQUESTS``: one
step, a reduced size and frame count; on 2 CPU cores the full-size defaults would take hours).
SD3.5 runs with T5 off (the preset key ``sd3.t5: off``; zeros of T5's shape condition the
transformer): T5-XXL is 4.76B parameters, 19 GB in float32, more than such a machine holds beside
the rest. Its prompt is still padded to ``max_sequence_length`` zeros, so the transformer's text
stream has its real length.

Each family runs in its own child process (``python -m bench.real_sizes --family NAME``), so its
peak RSS is its own. The child reads its baseline RSS once the Studio is built and before any
model is, and then samples (``bench.real_memory``), every ``SAMPLE_S``, the kernel's peak RSS
since the last sample (``/proc/self/status`` VmHWM, reset through ``/proc/self/clear_refs``)
beside the manager's placements. That gives, besides the process peak:

* ``peak_managed_bytes``: peak RSS less the baseline, everything the run added;
* ``peak_device_bytes``: the same less the RAM-only copies of evicted or streamed components,
  i.e. what a device would have held: resident weights, the streamed block, activations. On a
  CPU the "device" is RAM too, so evicted copies stay resident; this is the figure a budget bounds;
* per component, the working memory the backend asked the manager for (``largest_working``)
  against the activations measured while it was in use (RSS above every loaded weight).

Under ``--vram-budget`` the same requests run again for each budget; a row then says whether
``peak_device_bytes`` stayed within ``BUDGET_MARGIN`` of it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch

from bench.common import BenchOptions, device_name, format_table
from bench.real_memory import MemoryMonitor, PlacementLog

logger = logging.getLogger(__name__)

#: Registry names, in the order they run.
FAMILIES = ("cascade", "svd", "sv3d", "stablelm", "sd3", "sdxl")
TASKS = {"cascade": "text_to_image", "svd": "image_to_video", "sv3d": "orbit", "stablelm": "chat",
         "sd3": "sd3_text_to_image", "sdxl": "sdxl_text_to_image"}
#: The SD model each SD family's row runs (the one real-size model ``bench.sd_models`` builds).
SD_MODEL = {"sd3": "sd3.5-medium", "sdxl": "sdxl"}
#: Requests by level: ``tiny`` (tiny models, CI), ``quick`` (real sizes, the smallest request) and
#: ``real`` (real sizes, a larger one). Layer shapes never depend on these; each needs one model
#: call per stage at least. Measured on a shared 2-core AVX2 EPYC in float32: cascade quick about
#: 70 s of compute beside 80 s of random-weight building.
REQUESTS: dict[str, dict[str, dict[str, int]]] = {
    "cascade": {"tiny": dict(width=256, height=256, prior_steps=2, decoder_steps=2),
                "quick": dict(width=256, height=256, prior_steps=1, decoder_steps=1),
                "real": dict(width=512, height=512, prior_steps=1, decoder_steps=1)},
    "svd": {"tiny": dict(width=128, height=64, num_frames=3, steps=2),
            "quick": dict(width=256, height=256, num_frames=2, steps=1),
            "real": dict(width=512, height=320, num_frames=4, steps=1)},
    "sv3d": {"tiny": dict(size=64, num_frames=3, steps=2),
             "quick": dict(size=256, num_frames=2, steps=1),
             "real": dict(size=384, num_frames=4, steps=1)},
    "stablelm": {"tiny": {}, "quick": {}, "real": {}},  # new tokens: --tokens
    # T5's sequence at the API's smallest, 77 (CLIP's length): it is zeros with T5 off, and its
    # length is no layer shape; guided (the model's default guidance), as real runs are.
    "sd3": {"tiny": dict(width=256, height=256, steps=2, max_sequence_length=77),
            "quick": dict(width=256, height=256, steps=1, max_sequence_length=77),
            "real": dict(width=512, height=512, steps=1, max_sequence_length=256)},
    "sdxl": {"tiny": dict(width=256, height=256, steps=2), "quick": dict(width=256, height=256, steps=1),
             "real": dict(width=512, height=512, steps=1)},
}
#: Modules each family's models come from, imported before the baseline is read: libraries are
#: no activations (transformers' StableLM modelling alone is ~100 MB of RSS).
MODEL_MODULES = {
    "cascade": ("diffusers.models.unets.unet_stable_cascade", "transformers.models.clip.modeling_clip",
                "diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model"),
    "svd": ("diffusers.models.unets.unet_spatio_temporal_condition",
            "diffusers.models.autoencoders.autoencoder_kl_temporal_decoder", "transformers.models.clip.modeling_clip"),
    "sv3d": ("backends.sv3d.unet", "diffusers.models.autoencoders.autoencoder_kl",
             "transformers.models.clip.modeling_clip"),
    "stablelm": ("transformers.models.stablelm.modeling_stablelm",),
    "sd3": ("diffusers.models.transformers.transformer_sd3", "diffusers.models.autoencoders.autoencoder_kl",
            "transformers.models.clip.modeling_clip"),
    "sdxl": ("diffusers.models.unets.unet_2d_condition", "diffusers.models.autoencoders.autoencoder_kl",
             "transformers.models.clip.modeling_clip"),
}
#: Goal 2 of issue #15: the managed peak stays within 10 % of the budget.
BUDGET_MARGIN = 0.10
#: Seconds a family's child may run (``--timeout``) before it is stopped and reported.
DEFAULT_TIMEOUT_S = 1200
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


# ----- the parent: one child per family ------------------------------------------------------
def cli_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``python -m bench`` flags this scenario reads beyond ``BenchOptions``."""
    return {"quick": args.quick, "dtype": args.dtype, "families": args.families, "timeout_s": args.timeout,
            "threads": args.threads, "named": args.scenarios_named}


def resolve_dtype(name: str, device: torch.device) -> str:
    """``auto``: bfloat16 on a GPU or a CPU with native bf16, else float32 (``backends.runtime.cpu_dtype``)."""
    if name != "auto":
        return name
    if device.type != "cpu":
        return "bfloat16"
    from backends.runtime.cpu_dtype import read_cpu_features

    return "bfloat16" if read_cpu_features().fast_bf16 else "float32"


def level(options: BenchOptions, quick: bool) -> str:
    """The ``REQUESTS`` level a run uses."""
    return "tiny" if options.size == "tiny" else ("quick" if quick else "real")


def run(options: BenchOptions, *, quick: bool = False, dtype: str = "auto", families: Sequence[str] = FAMILIES,
        timeout_s: float = DEFAULT_TIMEOUT_S, threads: int = 0, named: bool = True) -> dict[str, Any]:
    """One child per family (and per ``--vram-budget``); returns the rows and a summary.

    ``named``: whether the command line named this scenario; a default run elsewhere than
    ``--size real --device cpu`` lists it as skipped rather than start four processes.
    """
    base: dict[str, Any] = {"scenario": "real_sizes", "device": device_name(options.device), "size": options.size}
    if not named and not (options.size == "real" and options.device.type == "cpu"):
        return {**base, "skipped": "runs by default for --size real --device cpu; name it (--scenarios "
                                   "real_sizes) to run it here", "rows": []}
    which, chosen = level(options, quick), resolve_dtype(dtype, options.device)
    budgets: tuple[float | None, ...] = options.vram_budgets_gb or (None,)
    rows = []
    for budget_gb in budgets:
        for family in families:
            budget = None if budget_gb is None else int(budget_gb * 2**30)
            rows.append(run_child(family, options, which, chosen, budget, timeout_s, threads))
            logger.info("real_sizes %s: %s", family, "ran" if rows[-1]["ran"] else rows[-1]["error"])
    budgeted = [row for row in rows if row["budget_bytes"] is not None]
    return {**base, "level": which, "dtype": chosen, "budget_margin": BUDGET_MARGIN,
            "requests": {family: describe_request(family, which, options.tokens) for family in families},
            "rows": rows, "completed": sum(row["ran"] for row in rows), "count": len(rows),
            "within_budget": sum(bool(row["within_10pct"]) for row in budgeted) if budgeted else None}


def run_child(family: str, options: BenchOptions, which: str, dtype: str, budget: int | None,
              timeout_s: float, threads: int) -> dict[str, Any]:
    """Run one family in a fresh interpreter; a crash or a timeout becomes a row that says so."""
    with tempfile.TemporaryDirectory(prefix="real-sizes-") as folder:
        out = Path(folder) / "row.json"
        command = [sys.executable, "-m", "bench.real_sizes", "--family", family, "--level", which,
                   "--device", options.device.type, "--dtype", dtype, "--tokens", str(options.tokens),
                   "--threads", str(threads), "--cache-dir", str(options.cache_dir), "--out", str(out)]
        if budget is not None:
            command += ["--budget-bytes", str(budget)]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                  cwd=Path(__file__).resolve().parent.parent)
        except subprocess.TimeoutExpired:
            return failed_row(family, dtype, budget, f"timed out after {timeout_s:.0f} s",
                              time.perf_counter() - started)
        if out.is_file():
            return json.loads(out.read_text(encoding="utf-8"))
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        return failed_row(family, dtype, budget, f"child exited {done.returncode} without a row: {tail}",
                          time.perf_counter() - started)


def failed_row(family: str, dtype: str, budget: int | None, error: str, seconds: float) -> dict[str, Any]:
    """A row for a family whose child gave none (every measured figure is null)."""
    return {"family": family, "task": TASKS[family], "pid": None, "ran": False, "error": error,
            "seconds": round(seconds, 2),
            "build_seconds": None, "dtype": dtype, "peak_rss_bytes": None, "baseline_rss_bytes": None,
            "peak_managed_bytes": None, "peak_device_bytes": None, "estimate_bytes": None, "weights_bytes": None,
            "working_bytes": {}, "evicted": [], "streamed": [], "dropped": [], "oom_retries": None,
            "tokens_per_s": None, "budget_bytes": budget, "within_10pct": None}


def describe_request(family: str, which: str, tokens: int) -> dict[str, Any]:
    """The request a row ran, as the JSON shows it."""
    if family == "stablelm":
        from bench.chat import MESSAGE

        return {"message": MESSAGE, "max_new_tokens": tokens}
    return {**REQUESTS[family][which], **({"model": SD_MODEL[family]} if family in SD_MODEL else {})}


# ----- the child: one family, measured ----------------------------------------------------------
def build_request(family: str, which: str, studio: Any, tokens: int) -> Any:
    """The registry request for ``family`` at level ``which``."""
    from PIL import Image

    from backends.cascade.requests import TextToImageRequest
    from backends.stablelm.requests import ChatRequest
    from backends.sv3d.requests import OrbitRequest
    from backends.svd.requests import VideoRequest
    from bench.chat import MESSAGE

    r = REQUESTS[family][which]
    if family == "cascade":
        return TextToImageRequest.build("a red lighthouse on a cliff at dusk", "", r["width"], r["height"],
                                        r["prior_steps"], r["decoder_steps"], 4.0, 0.0, 1, 7)
    if family == "svd":
        picture = Image.new("RGB", (r["width"], r["height"]), (200, 80, 40))
        return VideoRequest.build(picture, r["num_frames"], 6, 127, 0.02, r["steps"], 0, 3, width=r["width"],
                                  height=r["height"])
    if family == "sv3d":
        picture = Image.new("RGB", (r["size"], r["size"]), (255, 255, 255))
        picture.paste((200, 80, 40), (r["size"] // 4, r["size"] // 4, 3 * r["size"] // 4, 3 * r["size"] // 4))
        return OrbitRequest.build(picture, "p", 10.0, r["steps"], 5, size=r["size"], num_frames=r["num_frames"])
    if family in SD_MODEL:
        return sd_request(family, r, studio)
    defaults = studio.registry.preset.stablelm.defaults
    return ChatRequest.build(MESSAGE, [], None, defaults.temperature, defaults.top_p, tokens, seed=1)


def sd_request(family: str, r: dict[str, int], studio: Any) -> Any:
    """An SD family's text-to-image at ``r``'s size and steps, the model's default guidance."""
    from backends.runtime.image_requests import SdTextToImageRequest
    from backends.sd3.spec import Sd3Defaults
    from backends.sdxl.spec import SdxlDefaults

    model = SD_MODEL[family]
    guidance = SdxlDefaults().guidance if family == "sdxl" else Sd3Defaults().medium.guidance
    options = {"max_sequence_length": r["max_sequence_length"]} if "max_sequence_length" in r else {}
    return SdTextToImageRequest.build("a red lighthouse on a cliff at dusk", "", r["width"], r["height"], r["steps"],
                                      guidance, 1, 7, model, offered=list(studio.registry.models()),
                                      default_model=studio.registry.default_model(), options=options)


def run_request(studio: Any, family: str, request: Any) -> dict[str, Any]:
    """Run it through the registry; returns what the row adds (the chat's speed)."""
    from bench.models import no_progress

    if family != "stablelm":
        studio.registry.run(TASKS[family], request, no_progress)
        return {}
    stats = None
    for chunk in studio.registry.stream("chat", request, no_progress):
        stats = chunk.stats or stats
    if stats is None:
        raise RuntimeError("the chat stream ended without its stats chunk")
    # End to end, prefill included, as bench/chat.py counts it.
    return {"tokens_per_s": stats.tokens / stats.total_s if stats.total_s > 0 else None,
            "decode_tokens_per_s": stats.tokens_per_s, "first_token_s": stats.first_token_s,
            "tokens": stats.tokens, "prompt_tokens": stats.prompt_tokens, "stop_reason": stats.stop_reason}


def measure_family(family: str, which: str, device: torch.device, dtype: str, budget: int | None,
                   tokens: int, cache_dir: Path) -> dict[str, Any]:
    """Build the Studio, run ``family``'s request under the monitor, and return its row."""
    from bench.models import make_studio

    options = BenchOptions(device=device, size="tiny" if which == "tiny" else "real", runs=1, warmup=0,
                           tokens=tokens, cache_dir=cache_dir)
    studio = make_studio(options, budget_bytes=budget, variant="lite", dtype=DTYPES[dtype])
    actual_dtype = getattr(studio.registry.preset, family).dtype
    request = build_request(family, which, studio, tokens)
    # The backend (its imports, tokenizers and schedulers) and the model classes before the
    # baseline: they hold no weights, and their ~150 MB of libraries would count as activations.
    studio.registry.backend(family)
    for module in MODEL_MODULES[family]:
        importlib.import_module(module)
    placements = PlacementLog()
    memory_logger = logging.getLogger("backends.runtime.memory")
    memory_logger.addHandler(placements)
    memory_logger.setLevel(logging.INFO)
    monitor = MemoryMonitor(studio.manager)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    monitor.start()
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    error = None
    if family == "sd3":  # where T5 ran: off at real size (the module docstring says why)
        extra["t5"] = studio.registry.backend("sd3").t5
    try:
        extra.update(run_request(studio, family, request))
    except Exception as failure:  # reported in the row, not raised: the parent runs the next family
        error = f"{type(failure).__name__}: {failure}"
        logger.error("real_sizes %s failed:\n%s", family, traceback.format_exc())
    seconds = time.perf_counter() - started
    monitor.stop()
    loaded = [s for s in studio.manager.statuses() if studio.manager.component(s.name).loads]
    weights = sum(s.bytes for s in loaded)
    asked = studio.manager.largest_working()
    device_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else monitor.peak_device
    return {
        "family": family, "task": TASKS[family], "pid": os.getpid(), "ran": error is None, "error": error,
        "seconds": round(seconds, 2), "build_seconds": round(placements.build_seconds, 2), "dtype": actual_dtype,
        "peak_rss_bytes": monitor.peak_rss, "baseline_rss_bytes": monitor.baseline,
        "peak_managed_bytes": monitor.peak_rss - monitor.baseline, "peak_device_bytes": device_peak,
        "estimate_bytes": weights + max(asked.values(), default=0), "weights_bytes": weights,
        "working_bytes": {name: {"estimate": value, "measured": monitor.measured_working.get(name)}
                          for name, value in sorted(asked.items())},
        "evicted": placements.evicted, "streamed": placements.streamed, "dropped": placements.dropped,
        "oom_retries": studio.manager.oom_retries, "tokens_per_s": None, **extra,
        "budget_bytes": budget,
        "within_10pct": None if budget is None else device_peak <= (1 + BUDGET_MARGIN) * budget,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The child: ``python -m bench.real_sizes --family NAME --out row.json`` (``run`` starts it)."""
    parser = argparse.ArgumentParser(prog="python -m bench.real_sizes",
                                     description="Run one family's real-size request and write its row as JSON.")
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--level", choices=("tiny", "quick", "real"), default="quick")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--budget-bytes", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("STUDIO_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    row = measure_family(args.family, args.level, torch.device(args.device), args.dtype, args.budget_bytes,
                         args.tokens, args.cache_dir)
    args.out.write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
    return row


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f}"


def report(result: dict[str, Any]) -> str:
    """The printed table, or the reason it was skipped."""
    if result.get("skipped"):
        return f"real_sizes: skipped ({result['skipped']})"
    rows = [["family", "budget (MB)", "ran", "seconds (build)", "dtype", "peak RSS (MB)", "managed (MB)",
             "device peak (MB)", "estimate (MB)", "evicted", "streamed", "tokens/s"]]
    for row in result["rows"]:
        budget = "none" if row["budget_bytes"] is None else (
            f"{_mb(row['budget_bytes'])} ({'within' if row['within_10pct'] else 'OVER'} 10 %)")
        build = "" if row["build_seconds"] is None else f" ({row['build_seconds']:.0f})"
        speed = "" if row["tokens_per_s"] is None else f"{row['tokens_per_s']:.2f}"
        rows.append([row["family"], budget, "yes" if row["ran"] else f"NO: {row['error']}",
                     f"{row['seconds']:.0f}{build}", row["dtype"], _mb(row["peak_rss_bytes"]),
                     _mb(row["peak_managed_bytes"]), _mb(row["peak_device_bytes"]), _mb(row["estimate_bytes"]),
                     ", ".join(sorted(set(row["evicted"]))) or "-", ", ".join(sorted(set(row["streamed"]))) or "-",
                     speed])
    head = (f"real_sizes: {result['level']} requests on {result['device']}, {result['dtype']}, one child process "
            f"per family; {result['completed']} of {result['count']} ran")
    lines = [head, format_table(rows)]
    working = [["component", "asked (MB)", "measured (MB)", "measured / asked"]]
    for row in result["rows"]:
        if row["budget_bytes"] is not None:
            continue
        for name, figures in row["working_bytes"].items():
            measured = figures["measured"]
            ratio = f"{measured / figures['estimate']:.2f}" if measured is not None and figures["estimate"] else "n/a"
            working.append([name, _mb(figures["estimate"]), _mb(measured), ratio])
    if len(working) > 1:
        lines += ["working memory per stage: asked of the manager against activations measured in use",
                  format_table(working)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
