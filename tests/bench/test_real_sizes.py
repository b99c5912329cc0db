"""``real_sizes``: its machinery on the tiny models, through the same child processes as real sizes.

The real-size run itself takes minutes and ~10 GB a family (bench/README.md has its table); here the
same command runs the tiny models, so what is checked is the path and the row's shape, not figures.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from bench import SCENARIOS, real_sizes
from bench.__main__ import main, parse_args
from bench.common import BenchOptions
from bench.real_memory import PlacementLog

#: Every row has these, ran or not.
ROW_TYPES: dict[str, type | tuple[type, ...]] = {
    "family": str, "task": str, "ran": bool, "seconds": float, "dtype": str, "peak_rss_bytes": int,
    "baseline_rss_bytes": int, "peak_managed_bytes": int, "peak_device_bytes": int, "estimate_bytes": int,
    "weights_bytes": int, "working_bytes": dict, "evicted": list, "streamed": list, "dropped": list,
    "oom_retries": int, "budget_bytes": int, "within_10pct": bool, "pid": int, "build_seconds": float,
}


def test_each_family_runs_in_its_own_child_and_gives_a_full_row(
        tiny_built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An image family and the chat one under a budget that forces eviction (10.7 MB: the tiny
    cascade's prior, 4.7 MB, and its decoder, 5.6 MB plus 2 MB of working memory, fit one at a time)."""
    out = tmp_path / "real.json"
    main(["--device", "cpu", "--size", "tiny", "--scenarios", "real_sizes", "--families", "cascade,stablelm",
          "--vram-budget", "0.01", "--tokens", "8", "--cache-dir", str(tiny_built), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "real_sizes: tiny requests" in printed and "2 of 2 ran" in printed
    result = json.loads(out.read_text())["scenarios"]["real_sizes"]
    assert result["level"] == "tiny" and result["completed"] == result["count"] == 2
    assert result["requests"]["cascade"] == real_sizes.REQUESTS["cascade"]["tiny"]
    cascade, chat = result["rows"]
    assert (cascade["family"], chat["family"]) == ("cascade", "stablelm")
    for row in (cascade, chat):
        assert row["ran"] is True and row["error"] is None, row["error"]
        for key, kind in ROW_TYPES.items():
            assert isinstance(row[key], kind), (row["family"], key, row[key])
        assert row["dtype"] == "float32"  # the tiny preset's
        assert row["pid"] != os.getpid()  # its own process, so its peak RSS is its own
        assert row["peak_rss_bytes"] >= row["baseline_rss_bytes"] > 0
        assert row["peak_managed_bytes"] == row["peak_rss_bytes"] - row["baseline_rss_bytes"]
        assert 0 < row["peak_device_bytes"] <= row["peak_managed_bytes"]
        assert row["budget_bytes"] == int(0.01 * 2**30)
        assert row["estimate_bytes"] == row["weights_bytes"] + max(
            figures["estimate"] for figures in row["working_bytes"].values())
    assert cascade["pid"] != chat["pid"]
    assert set(cascade["working_bytes"]) == {f"cascade.{stage}" for stage in ("text_encoder", "prior", "decoder",
                                                                               "vqgan")}
    assert cascade["evicted"], "the budget must evict one tiny cascade stage for the next"
    assert cascade["tokens_per_s"] is None
    assert chat["tokens_per_s"] > 0 and chat["tokens"] == 8 and chat["prompt_tokens"] > 10


def test_the_sd_families_run_in_their_children_with_their_models(tiny_built: Path, tmp_path: Path) -> None:
    """SD3.5 Medium and SDXL through the same children; at real size SD3.5 runs with T5 off."""
    out = tmp_path / "sd.json"
    main(["--device", "cpu", "--size", "tiny", "--scenarios", "real_sizes", "--families", "sd3,sdxl",
          "--cache-dir", str(tiny_built), "--out", str(out)])
    result = json.loads(out.read_text())["scenarios"]["real_sizes"]
    assert result["completed"] == result["count"] == 2
    assert result["requests"]["sd3"] == {**real_sizes.REQUESTS["sd3"]["tiny"], "model": "sd3.5-medium"}
    assert result["requests"]["sdxl"]["model"] == "sdxl"
    sd3, sdxl = result["rows"]
    for row, family, denoiser in ((sd3, "sd3", "sd3.medium.transformer"), (sdxl, "sdxl", "sdxl.unet")):
        assert row["ran"] is True and row["error"] is None, row["error"]
        assert row["task"] == f"{family}_text_to_image"
        for key, kind in ROW_TYPES.items():
            if key not in ("budget_bytes", "within_10pct"):  # no budget here: both null
                assert isinstance(row[key], kind), (family, key, row[key])
        assert row["budget_bytes"] is None and row["within_10pct"] is None
        assert denoiser in row["working_bytes"] and f"{family}.vae" in row["working_bytes"]
        assert row["estimate_bytes"] == row["weights_bytes"] + max(
            figures["estimate"] for figures in row["working_bytes"].values()) > row["weights_bytes"]
    assert sd3["t5"] == "device"  # the tiny preset's; real-size rows say "off"
    assert "sd3.text_encoder_3" in sd3["working_bytes"] and "sdxl.refiner_unet" not in sdxl["working_bytes"]


def test_a_child_that_runs_out_of_time_becomes_a_row_that_says_so(tiny_cache: Path) -> None:
    options = BenchOptions(device=torch.device("cpu"), size="tiny", runs=1, warmup=0, tokens=8, cache_dir=tiny_cache)
    row = real_sizes.run_child("svd", options, "tiny", "float32", None, timeout_s=0.2, threads=1)
    assert row["ran"] is False and row["error"].startswith("timed out after")
    assert row["family"] == "svd" and row["peak_rss_bytes"] is None
    assert set(ROW_TYPES) <= set(row)


def test_it_is_skipped_unless_named_or_the_cpu_real_run(tiny_cache: Path) -> None:
    """A plain ``python -m bench`` lists it as skipped instead of starting four processes."""
    options = BenchOptions(device=torch.device("cpu"), size="tiny", runs=1, warmup=0, tokens=8, cache_dir=tiny_cache)
    result = real_sizes.run(options, named=False)
    assert "--size real --device cpu" in result["skipped"] and result["rows"] == []
    assert "skipped" in real_sizes.report(result)


def test_the_cpu_real_run_defaults_to_it_and_refuses_the_gpu_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["--device", "cpu", "--size", "real", "--quick"])
    assert args.scenarios == ["real_sizes"] and args.scenarios_named is False
    assert args.families == real_sizes.FAMILIES and args.dtype == "auto"
    assert "real_sizes" in SCENARIOS
    with pytest.raises(SystemExit):
        parse_args(["--device", "cpu", "--size", "real", "--scenarios", "image_resident"])
    refusal = capsys.readouterr().err
    assert "--size real on the CPU runs real_sizes" in refusal and "or audio" in refusal
    assert "image_resident need --device cuda" in refusal
    # audio's real size runs on the CPU too, when named (one short request: bench/audio.py)
    assert parse_args(["--device", "cpu", "--size", "real", "--scenarios", "audio"]).scenarios == ["audio"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--families", "cascade,paint"],
     "--families: expected a comma-separated subset of cascade,svd,sv3d,stablelm,sd3,sdxl"),
    (["--timeout", "0"], "--timeout: must be more than 0 seconds"),
    (["--dtype", "int8"], "--dtype: invalid choice"),
    (["--merge", "."], "--merge: give --out and/or --table"),
])
def test_bad_flags_name_the_flag(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--device", "cpu", "--size", "real", *argv])
    assert message in capsys.readouterr().err


def test_auto_dtype_follows_the_cpu() -> None:
    from backends.runtime.cpu_dtype import read_cpu_features

    expected = "bfloat16" if read_cpu_features().fast_bf16 else "float32"
    assert real_sizes.resolve_dtype("auto", torch.device("cpu")) == expected
    assert real_sizes.resolve_dtype("float32", torch.device("cpu")) == "float32"


def test_the_placement_log_reads_the_managers_records() -> None:
    """Eviction and streaming come from the manager's own log lines; a changed message breaks this."""
    from backends.runtime.memory import MemoryManager
    from backends.runtime.probe import FakeProbe

    log = PlacementLog()
    memory_logger = logging.getLogger("backends.runtime.memory")
    memory_logger.addHandler(log)
    previous = memory_logger.level
    memory_logger.setLevel("INFO")
    try:
        manager = MemoryManager(FakeProbe(device_total=10_000), "cpu", budget_bytes=10_000)
        manager.register("a", lambda: torch.nn.Linear(30, 30))  # 3,720 bytes
        manager.register("b", lambda: torch.nn.Linear(30, 30))
        manager.register("big", lambda: torch.nn.Sequential(*(torch.nn.Linear(30, 30) for _ in range(4))))
        for name in ("a", "b", "big"):
            with manager.use(name, 2_600):
                pass
    finally:
        memory_logger.removeHandler(log)
        memory_logger.setLevel(previous)
    # b's 3,720 + 2,600 working + the 500 reserve do not fit beside a; big (14,880) is more than
    # the whole budget, so it streams, and its largest block needs b's room.
    assert log.evicted == ["a", "b"]
    assert log.streamed == ["big"]
    assert log.build_seconds >= 0
    assert manager.largest_working() == {"a": 2_600, "b": 2_600, "big": 2_600}
