"""``cluster``: the tiny mix on two Ray Serve replicas against one, and one request's overhead.

The quick run starts a real local Ray cluster in the scenario's child process (about a minute on
the 2-core CI machine), so what is checked is the path, the JSON's shape and that the figures
hang together; the speed-ups themselves are machine figures (bench/README.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import SCENARIOS, cluster
from bench.__main__ import main
from bench.common import BenchOptions

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_times_both_configurations_on_two_replicas(
        tiny_built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cluster.json"
    threads = torch.get_num_threads()
    main(["--device", "cpu", "--size", "tiny", "--scenarios", "cluster", "--quick", "--tokens", "16",
          "--cache-dir", str(tiny_built), "--out", str(out)])
    assert torch.get_num_threads() == threads
    printed = capsys.readouterr().out
    assert "cluster: mix of 2 video, 2 image, 2 chat on 2 replicas" in printed
    assert "throughput 2 replicas / 1:" in printed and "overhead, one tiny image:" in printed
    result = json.loads(out.read_text())["scenarios"]["cluster"]
    assert (result["replicas"], result["threads"], result["runs"], result["quick"]) == (2, 1, 1, True)
    assert result["replica_device"] == ["cpu"]
    assert result["mix"]["counts"] == {"video": 2, "image": 2, "chat": 2} and len(result["mix"]["order"]) == 6
    assert result["mix"]["requests"]["chat"] == {"max_new_tokens": 16}
    assert result["startup_s"] > 0 and result["warmup_s"] > 0

    one, two = result["configurations"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    for config in (one, two):
        assert config["deployment_replicas"] == 2 and config["passes"] == 1 and config["jobs_per_pass"] == 6
        assert config["completed"] == config["jobs_run"] == 6, "every job of the mix must complete"
        assert 0 < config["median_s"] < 120 and config["runs_s"] == [round(config["median_s"], 4)]
        assert config["jobs_per_s"] == pytest.approx(6 / config["median_s"])
        assert config["jobs_per_s_per_replica"] == pytest.approx(config["jobs_per_s"] / config["replicas"])
        assert set(config["job_median_s"]) == {"video", "image", "chat"}
        assert all(seconds > 0 for seconds in config["job_median_s"].values())
        # Images and videos say which replica ran them; chat chunks do not.
        assert sum(config["jobs_by_replica"].values()) == 4 and config["unattributed_jobs"] == 2
    assert len(two["replicas_used"]) == 2, "two jobs at once must run on both replicas"
    assert result["throughput_ratio"] == pytest.approx(two["jobs_per_s"] / one["jobs_per_s"])
    assert result["throughput_ratio"] > 0 and result["goal_throughput_ratio_min"] == 1.6
    assert result["scaling_efficiency"] == pytest.approx(result["throughput_ratio"] / 2)

    overhead = result["overhead"]
    assert overhead["goal_ratio_max"] == 1.05
    assert overhead["ratio"] == pytest.approx(overhead["replica"]["median_s"] / overhead["in_process"]["median_s"])
    assert overhead["ratio"] > 0
    assert 0 < overhead["replica_compute_s"] <= overhead["replica"]["median_s"]
    assert overhead["transport_s"] == pytest.approx(overhead["replica"]["median_s"] - overhead["replica_compute_s"])
    assert 0 < overhead["in_process_compute_s"] <= overhead["in_process"]["median_s"]
    assert 0 < overhead["serve_call_s"] < overhead["replica"]["median_s"]  # an empty call: less than a job

    placement = result["placement"]
    assert len(placement) == 2 and {p["name"] for p in placement} == set(two["replicas_used"])
    assert len({p["pid"] for p in placement}) == 2 and os.getpid() not in {p["pid"] for p in placement}
    for replica in placement:
        assert replica["state"] == "live" and replica["device"] == "cpu"
        loaded = {name.split(".")[0] for name, place in replica["models"].items() if place != "disk"}
        assert {"cascade", "svd", "stablelm"} <= loaded, "the warm-up must reach every family on every replica"


def test_a_default_run_lists_it_as_skipped_and_never_imports_ray() -> None:
    """In a fresh interpreter, since this test session may have started Ray for other tests."""
    script = (
        "import sys, torch\n"
        "from bench.__main__ import parse_args\n"
        "from bench import cluster\n"
        "from bench.common import BenchOptions\n"
        "args = parse_args(['--device', 'cpu'])\n"
        "assert 'cluster' in args.scenarios, args.scenarios\n"
        "options = BenchOptions(device=torch.device('cpu'), size='tiny', runs=1, warmup=0, tokens=8,\n"
        "                       cache_dir=__import__('pathlib').Path('unused'))\n"
        "result = cluster.run(options, **cluster.cli_kwargs(args))\n"
        "print(cluster.report(result))\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cluster: skipped (starts a Ray cluster; name it (--scenarios cluster)" in done.stdout


def test_size_real_is_refused_naming_the_flag(tmp_path: Path) -> None:
    assert SCENARIOS["cluster"] == "bench.cluster"
    options = BenchOptions(device=torch.device("cpu"), size="real", runs=1, warmup=0, tokens=8, cache_dir=tmp_path)
    with pytest.raises(SystemExit, match="--size real: the cluster scenario runs the tiny models only"):
        cluster.run(options)
