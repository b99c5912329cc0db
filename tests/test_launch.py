"""The one-click launcher, run for real in a scratch copy of the repository."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def scratch_copy(target: Path) -> Path:
    """The files git tracks (what a fresh clone has), without the venv or caches."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_and_probe(repo: Path, models: Path, log: Path) -> tuple[float, str]:
    """Run launch.sh with the tiny preset until /status answers; returns seconds and the output."""
    port = free_port()
    env = dict(os.environ, STUDIO_TORCH_INDEX="default", PYTHONUNBUFFERED="1")
    env.pop("VIRTUAL_ENV", None)
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(
            ["bash", "launch.sh", "--preset", "tiny", "--port", str(port), "--models-dir", str(models),
             "--outputs", str(repo / "outputs")],
            cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = started + 900
        while time.perf_counter() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                from gradio_client import Client

                status = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(api_name="/status")
                assert status["preset"] == "tiny"
                return time.perf_counter() - started, log.read_text()
            except (httpx.HTTPError, ConnectionError, ValueError):
                time.sleep(1)
        raise AssertionError("the app did not answer /status in time:\n" + log.read_text()[-3000:])
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def test_first_start_installs_and_the_second_skips_it(tmp_path: Path) -> None:
    repo = scratch_copy(tmp_path / "repo")
    first, first_out = start_and_probe(repo, tmp_path / "models", tmp_path / "first.log")
    assert re.search(r"Found Python 3\.1[0-2]\.\d+ at .*; creating \.venv", first_out)
    assert "Installing into .venv" in first_out and (repo / ".venv" / ".requirements.sha256").is_file()
    assert "running at http://127.0.0.1" in first_out

    second, second_out = start_and_probe(repo, tmp_path / "models", tmp_path / "second.log")
    assert "Requirements unchanged since the last install: skipping it." in second_out
    assert "Installing" not in second_out
    assert second < first / 3, (first, second)


@pytest.mark.parametrize(("smi", "expected"), [
    ("CUDA Version: 13.0", "whl/cu130"),
    ("CUDA Version: 12.9", "whl/cu128"),
    ("CUDA Version: 12.6", "whl/cu126"),
    ("CUDA Version: 12.2", "whl/cpu"),
    (None, "whl/cpu"),
])
def test_launcher_picks_the_torch_build_from_the_driver(tmp_path: Path, smi: str | None, expected: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if smi:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\necho '| NVIDIA-SMI 580.1   Driver Version: 580.1   {smi}  |'\n")
        fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(ROOT / "launch.sh"), "--which-torch"], env=env,
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith(expected)
    assert ("supports CUDA" in result.stderr) == (smi is not None)


def test_launch_bat_mirrors_the_launcher_options() -> None:
    def options(path: Path) -> set[str]:
        return set(re.findall(r"--(?:setup-only|reinstall|which-torch|[a-z]+-[a-z]+)\b",
                              path.read_text())) & {"--setup-only", "--reinstall", "--which-torch"}

    sh, bat = ROOT / "launch.sh", ROOT / "launch.bat"
    assert options(sh) == options(bat) == {"--setup-only", "--reinstall", "--which-torch"}
    for step in ("cu130", "cu128", "cu126", "whl/cpu", "STUDIO_TORCH_INDEX", ".requirements.sha256",
                 "3.10", "3.12", "app.py"):
        assert step in sh.read_text() and step in bat.read_text(), step
