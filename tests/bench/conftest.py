"""Fixtures of the benchmark tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_built(tiny_cache: Path) -> Path:
    """The session's tiny models, built in this process before any benchmark child starts.

    The children (``python -m bench`` on the CPU uses one thread for tiny models) would otherwise
    build them first, and the tiny Stable Cascade's EfficientNet and previewer calibration depends
    on torch's thread count in the last bits, which ``test_tiny``'s byte-identical check catches.
    """
    from backends.families import TINY

    for family in ("cascade", "svd", "sv3d", "stablelm", "sd3", "sdxl"):
        TINY.ensure(family, tiny_cache)
    return tiny_cache
