"""Fixtures of the SD3.5 backend tests: one tiny cache, one float32 and one bfloat16 backend."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from backends.families import load_context
from backends.runtime.loading import LoadContext
from backends.runtime.memory import MemoryManager
from backends.runtime.probe import GB, FakeProbe
from backends.sd3.backend import Sd3Backend
from tests.backends.sd3.common import tiny_settings
from tests.threads import one_torch_thread


@pytest.fixture(scope="package", autouse=True)
def one_thread() -> Iterator[None]:
    """These tests on one intra-op thread (``tests.threads`` says why)."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def sd3_ctx(tiny_cache: Path) -> LoadContext:
    return load_context(cache_dir=tiny_cache, offline=True)


@pytest.fixture(scope="session")
def backend(sd3_ctx: LoadContext) -> Sd3Backend:
    """Float32 on the CPU with room for everything (no evictions)."""
    return Sd3Backend(tiny_settings(), MemoryManager(FakeProbe(device_total=16 * GB), device="cpu"), sd3_ctx)


@pytest.fixture(scope="session")
def bf16_backend(sd3_ctx: LoadContext) -> Sd3Backend:
    return Sd3Backend(tiny_settings(dtype="bfloat16"), MemoryManager(FakeProbe(device_total=16 * GB), device="cpu"),
                      sd3_ctx)
