"""``python -m bench``: run the chosen scenarios, print a table each, write one JSON file."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any, Sequence

from bench import OPTIONAL, SCENARIOS


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    import torch

    parser = argparse.ArgumentParser(prog="python -m bench", description="Run benchmark scenarios, print a "
                                     "table for each, and optionally write the results as JSON.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the models run (default: cuda when available)")
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny",
                        help="tiny random-weight models, or real architectures with random weights (GPU)")
    default = [name for name in SCENARIOS if name not in OPTIONAL]
    parser.add_argument("--scenarios", default=",".join(default),
                        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all but "
                             f"{','.join(sorted(OPTIONAL))})")
    parser.add_argument("--compile", action="store_true",
                        help="also run the compile scenario (regional torch.compile of the repeated blocks)")
    parser.add_argument("--vram-budget", default="",
                        help="comma-separated GB budgets for image_offload (default: 8,12 on CUDA; on the "
                             "CPU one computed from the tiny sizes that forces eviction)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 timed run, no warm-up, 16 chat tokens (overrides those flags)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per variant first")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per chat reply")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch; 0 is torch's own choice. Default: 1 for --size tiny "
                             "on the CPU (64-wide matrices: thread hand-offs cost more than the math, and "
                             "on a busy machine they dominate), else 0")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where tiny models are built (default: the app's cache folder)")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in SCENARIOS]
    if unknown or not wanted:
        parser.error(f"--scenarios: unknown {', '.join(unknown) or 'empty list'}; choose from {','.join(SCENARIOS)}")
    if args.compile and "compile" not in wanted:
        wanted.append("compile")
    args.scenarios = wanted
    try:
        args.vram_budget = tuple(float(v) for v in args.vram_budget.split(",") if v.strip())
    except ValueError:
        parser.error(f"--vram-budget: expected comma-separated GB numbers, got {args.vram_budget!r}")
    if any(v <= 0 for v in args.vram_budget):
        parser.error("--vram-budget: every budget must be more than 0 GB")
    if args.quick:
        args.runs, args.warmup, args.tokens = 1, 0, 16
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    for flag in ("runs", "tokens"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag}: must be at least 1")
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" and args.size == "tiny" else 0
    if args.threads < 0:
        parser.error("--threads: must be 0 (torch's default) or more")
    if args.warmup < 0:
        parser.error("--warmup: must be 0 or more")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks; returns what was written to ``--out``."""
    import torch

    logging.basicConfig(level=os.environ.get("STUDIO_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # main() may run inside a bigger process (the tests)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    import app
    from bench.common import BenchOptions

    if args.size == "real" and args.device != "cuda":
        # Before any scenario builds anything: real-size models on a CPU take many GB and minutes.
        raise SystemExit("--size real needs --device cuda: real-size random-weight models are GPU benchmarks")
    options = BenchOptions(device=torch.device(args.device), size=args.size, runs=args.runs, warmup=args.warmup,
                           tokens=args.tokens, cache_dir=args.cache_dir or app.cache_dir(None),
                           vram_budgets_gb=args.vram_budget, compile=args.compile)
    results: dict[str, Any] = {
        "meta": {"date": dt.datetime.now().isoformat(timespec="seconds"), "device": args.device,
                 "size": args.size, "torch": torch.__version__, "transformers": transformers.__version__,
                 "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
                 "runs": args.runs, "warmup": args.warmup, "quick": args.quick},
        "scenarios": {},
    }
    for name in args.scenarios:
        module = importlib.import_module(SCENARIOS[name])
        result = module.run(options)
        results["scenarios"][name] = result
        print(module.report(result), flush=True)  # the table is this command's output
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.out.with_name(args.out.name + ".tmp")
        temporary.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        temporary.replace(args.out)
        print(f"results written to {args.out}", flush=True)
    return results


if __name__ == "__main__":
    main()
