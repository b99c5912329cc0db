"""A budget on the CPU fixes malloc's mmap threshold, so freed activations leave the process."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

from backends.families import FAMILIES
from backends.runtime.cpu_heap import MMAP_THRESHOLD_BYTES
from backends.runtime.studio import Studio, StudioConfig

#: Allocates 48 tensors of 6 MiB with a small tensor kept between each pair (as activations sit
#: between weights and caches), frees the big ones and prints the RSS that stayed, in MiB.
CHILD = """
import json, sys, torch
from backends.runtime.cpu_heap import bound_heap

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

bound = bound_heap() if sys.argv[1] == "bound" else None
warm = torch.ones(12 * 2**18)  # 12 MiB: its own mapping; freeing it raises glibc's dynamic threshold
del warm
before = rss()
big, small = [], []
for _ in range(48):
    big.append(torch.ones(6 * 2**18))
    small.append(torch.ones(2**14))
peak = rss()
del big
print(json.dumps({"bound": bound, "allocated": peak - before, "kept": rss() - before}))
"""


def run_child(mode: str) -> dict[str, float]:
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=root, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_freed_activations_leave_the_process_once_the_heap_is_bound() -> None:
    assert platform.libc_ver()[0] == "glibc"  # this machine and CI: the case the module handles
    default, bound = run_child("default"), run_child("bound")
    assert default["allocated"] > 250 and bound["allocated"] > 250  # 288 MiB touched either way
    # glibc's default keeps most of it resident; the bound heap gives nearly all of it back.
    assert default["kept"] > 0.5 * default["allocated"], default
    assert bound["bound"] == MMAP_THRESHOLD_BYTES
    assert bound["kept"] < 0.1 * bound["allocated"], bound


def test_the_studio_binds_the_heap_only_for_a_budget_on_the_cpu(tiny_cache: Path, tmp_path: Path) -> None:
    def status(budget: int | None) -> dict:
        return Studio(StudioConfig(preset="tiny", vram_budget_bytes=budget, cache_dir=tiny_cache,
                                   outputs_dir=tmp_path / "outputs"), FAMILIES).status()

    assert status(None)["cpu_heap_threshold"] is None
    assert status(2**30)["cpu_heap_threshold"] == MMAP_THRESHOLD_BYTES
