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
from bench.real_sizes import DEFAULT_TIMEOUT_S, DTYPES, FAMILIES

#: What ``--size real --device cpu`` runs by default (the other scenarios are GPU benchmarks).
CPU_REAL = "real_sizes"
#: What it may run when named: ``real_sizes`` and the scenarios with a CPU real-size mode of their
#: own (``audio``: one short request, ours only; ``bench/audio.py`` says why).
CPU_REAL_NAMED = frozenset({CPU_REAL, "audio"})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    import torch

    parser = argparse.ArgumentParser(prog="python -m bench", description="Run benchmark scenarios, print a "
                                     "table for each, and optionally write the results as JSON.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the models run (default: cuda when available)")
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny",
                        help="tiny random-weight models, or real architectures with random weights (GPU; on the "
                             "CPU only the real_sizes and audio scenarios)")
    parser.add_argument("--scenarios", default=None,
                        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all but "
                             f"{','.join(sorted(OPTIONAL))}; with --size real --device cpu: {CPU_REAL})")
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
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                        help="real_sizes: the models' dtype (default auto: bfloat16 on a GPU or a CPU with "
                             "native bf16, else float32)")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help=f"real_sizes: comma-separated subset of {','.join(FAMILIES)}")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="real_sizes: seconds each family's child process may run before it is stopped")
    parser.add_argument("--table", type=Path, help="also write the printed tables here (Markdown)")
    parser.add_argument("--merge", type=Path, metavar="DIR",
                        help="run nothing: combine the JSON files in DIR (one per run, as bench/gpu_check.sh "
                             "writes them) into --out and --table")
    args = parser.parse_args(argv)
    if args.merge is not None:
        if args.out is None and args.table is None:
            parser.error("--merge: give --out and/or --table to write the merged results to")
        if not args.merge.is_dir():
            parser.error(f"--merge: {args.merge} is not a folder")
        return args
    args.scenarios_named = args.scenarios is not None
    if args.scenarios is None:
        cpu_real = args.size == "real" and args.device == "cpu"
        args.scenarios = CPU_REAL if cpu_real else ",".join(name for name in SCENARIOS if name not in OPTIONAL)
    wanted = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in SCENARIOS]
    if unknown or not wanted:
        parser.error(f"--scenarios: unknown {', '.join(unknown) or 'empty list'}; choose from {','.join(SCENARIOS)}")
    if args.compile and "compile" not in wanted:
        wanted.append("compile")
    args.scenarios = wanted
    gpu_only = [name for name in wanted if name not in CPU_REAL_NAMED]
    if args.size == "real" and args.device == "cpu" and gpu_only:
        # Before any scenario builds anything: the others are GPU benchmarks of real-size models.
        parser.error(f"--size real on the CPU runs {CPU_REAL} (every family at its smallest real-size request) "
                     f"or audio (one short request); {', '.join(gpu_only)} need --device cuda")
    families = [name.strip() for name in args.families.split(",") if name.strip()]
    if not families or any(name not in FAMILIES for name in families):
        parser.error(f"--families: expected a comma-separated subset of {','.join(FAMILIES)}, got {args.families!r}")
    args.families = tuple(families)
    if args.timeout <= 0:
        parser.error("--timeout: must be more than 0 seconds")
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
    if args.merge is not None:
        return merge(args.merge, args.out, args.table)
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
    tables: list[str] = []
    for name in args.scenarios:
        module = importlib.import_module(SCENARIOS[name])
        # A scenario that reads flags beyond BenchOptions says which (real_sizes: --dtype, ...).
        extra = module.cli_kwargs(args) if hasattr(module, "cli_kwargs") else {}
        result = module.run(options, **extra)
        results["scenarios"][name] = result
        tables.append(module.report(result))
        print(tables[-1], flush=True)  # the table is this command's output
        # After every scenario, so a run stopped by a time limit keeps what it finished.
        _write(results, tables, args.out, args.table)
    if args.out is not None:
        print(f"results written to {args.out}", flush=True)
    return results


def _write(results: dict[str, Any], tables: list[str], out: Path | None, table: Path | None) -> None:
    """Write the JSON and the Markdown tables, each atomically (a reader never sees half a file)."""
    for path, text in ((out, json.dumps(results, indent=2) + "\n"), (table, _markdown(results, tables))):
        if path is None:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)


def _markdown(results: dict[str, Any], tables: list[str]) -> str:
    meta = results["meta"]
    head = ", ".join(f"{key} {meta[key]}" for key in ("date", "device", "size", "torch", "quick") if key in meta)
    lines = [f"# python -m bench: {head}", ""]
    for name, status in results.get("steps", {}).items():
        lines.append(f"- step `{name}`: exit {status['rc']} after {status['seconds']} s"
                     + (" (timed out)" if status["timed_out"] else ""))
    for text in tables:
        lines += ["", "```", text, "```"]
    return "\n".join(lines) + "\n"


def merge(folder: Path, out: Path | None, table: Path | None) -> dict[str, Any]:
    """Combine ``folder``'s ``NAME.json`` results (and ``NAME.rc``: exit code and seconds) into one.

    ``bench/gpu_check.sh`` runs each group of scenarios as its own command under a time limit;
    a group that timed out or failed has an ``.rc`` but no ``.json``, and ``steps`` says so.
    """
    merged: dict[str, Any] = {"meta": {}, "steps": {}, "scenarios": {}}
    tables: list[str] = []
    for rc_file in sorted(folder.glob("*.rc")):
        code, seconds = (rc_file.read_text(encoding="ascii").split() + ["0", "0"])[:2]
        merged["steps"][rc_file.stem] = {"rc": int(code), "seconds": int(seconds), "timed_out": code in ("124", "137"),
                                         "wrote_results": rc_file.with_suffix(".json").is_file()}
    for part in sorted(folder.glob("*.json")):
        results = json.loads(part.read_text(encoding="utf-8"))
        merged["meta"] = merged["meta"] or results["meta"]
        for name, result in results["scenarios"].items():
            merged["scenarios"][name] = result
            tables.append(importlib.import_module(SCENARIOS[name]).report(result))
    _write(merged, tables, out, table)
    print("\n".join(tables), flush=True)
    return merged


if __name__ == "__main__":
    main()
