"""Fixtures of the Stable Audio Open backend tests: one tiny cache, one float32 and one bfloat16 backend."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from backends.audio.backend import AudioBackend
from backends.families import load_context
from backends.runtime.loading import LoadContext
from backends.runtime.memory import MemoryManager
from backends.runtime.probe import GB, FakeProbe
from tests.backends.audio.common import tiny_settings
from tests.threads import one_torch_thread


@pytest.fixture(scope="package", autouse=True)
def one_thread() -> Iterator[None]:
    """These tests on one intra-op thread (``tests.threads`` says why)."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def audio_ctx(tiny_cache: Path) -> LoadContext:
    return load_context(cache_dir=tiny_cache, offline=True)


@pytest.fixture(scope="session")
def backend(audio_ctx: LoadContext) -> AudioBackend:
    """Float32 on the CPU with room for everything (no evictions)."""
    return AudioBackend(tiny_settings(), MemoryManager(FakeProbe(device_total=16 * GB), device="cpu"), audio_ctx)


@pytest.fixture(scope="session")
def bf16_backend(audio_ctx: LoadContext) -> AudioBackend:
    return AudioBackend(tiny_settings(dtype="bfloat16"), MemoryManager(FakeProbe(device_total=16 * GB), device="cpu"),
                        audio_ctx)
