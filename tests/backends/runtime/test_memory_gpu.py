"""What only a GPU can show: real device placement, pinned CPU copies, streaming on CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backends.runtime.memory import MemoryManager
from backends.runtime.probe import FakeProbe, SystemProbe

MB = 2**20
pytestmark = pytest.mark.gpu


def big_linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(nn.Linear(2048, 2048) for _ in range(4)))  # 4 x 16 MB


def test_eviction_frees_device_memory_and_keeps_a_pinned_cpu_copy() -> None:
    manager = MemoryManager(SystemProbe(torch.device("cuda")), "cuda")
    manager.register("m", big_linear)
    x = torch.ones(1, 2048, device="cuda")
    with manager.use("m") as module:
        resident = torch.cuda.memory_allocated()
        assert module[0].weight.is_cuda
        expected = module(x).cpu()
    manager.evict_all()
    assert not module[0].weight.is_cuda and module[0].weight.is_pinned()
    assert torch.cuda.memory_allocated() <= resident - 60 * MB
    with manager.use("m") as module:  # back up with one pinned copy, same result
        assert torch.equal(module(x).cpu(), expected)
    reading = manager.reading()
    assert "cuda" in reading.device_name and 0 < reading.device_free <= reading.device_total


def test_streaming_on_cuda_gives_the_resident_result_within_a_small_budget() -> None:
    probe = FakeProbe(device_total=80 * 2**30)
    manager = MemoryManager(probe, "cuda", budget_bytes=40 * MB, reserve_bytes=0)
    manager.register("m", big_linear)
    reference = big_linear().cuda()
    x = torch.randn(3, 2048, device="cuda")
    with manager.use("m") as module:
        assert manager.component("m").placement.value == "offload"
        assert torch.allclose(module(x), reference(x))
    assert not module[0].weight.is_cuda
