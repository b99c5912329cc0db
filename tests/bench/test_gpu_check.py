"""``bench/gpu_check.sh``: its ``--dry-run`` (what CI can run) writes both files the GPU run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import main

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


def test_dry_run_prints_the_gpu_commands_and_writes_the_json_and_the_table(tiny_built: Path,
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "check"
    # app.cache_dir() follows XDG_CACHE_HOME: the session's tiny models, not a fresh build.
    env = {**os.environ, "PYTHON": sys.executable, "XDG_CACHE_HOME": str(tiny_built.parent)}
    done = subprocess.run(["bash", str(SCRIPT), str(out), "--dry-run"], capture_output=True, text=True,
                          timeout=240, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    for scenario in ("never_oom", "image_resident,image_offload --vram-budget 8,12", "switching", "chat", "audio",
                     "compile"):
        assert f"--device cuda --size real --scenarios {scenario}" in done.stdout
    assert "wrote" in done.stdout
    results = json.loads((out / "gpu.json").read_text())
    assert set(results["scenarios"]) == {"never_oom", "image_resident", "image_offload", "switching", "chat",
                                         "audio", "compile"}
    assert results["steps"]["dry_run"]["rc"] == 0 and results["steps"]["dry_run"]["timed_out"] is False
    assert results["meta"]["size"] == "tiny"
    table = (out / "gpu.md").read_text()
    assert table.startswith("# python -m bench") and "never_oom: skipped" in table and "chat:" in table


def test_it_refuses_a_missing_folder_argument() -> None:
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage: bench/gpu_check.sh OUTDIR [--dry-run]" in done.stderr


def test_merge_records_a_step_that_timed_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A group killed by its time limit leaves an exit code and no JSON; the merge says so."""
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "never_oom.rc").write_text("124 240\n")
    merged = main(["--merge", str(parts), "--out", str(tmp_path / "gpu.json"), "--table", str(tmp_path / "gpu.md")])
    assert merged["steps"]["never_oom"] == {"rc": 124, "seconds": 240, "timed_out": True, "wrote_results": False}
    assert "step `never_oom`: exit 124 after 240 s (timed out)" in (tmp_path / "gpu.md").read_text()
