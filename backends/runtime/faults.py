"""Fault injection for tests: named sites in the backends that can be made to raise on demand.

Backends call ``manager.checkpoint(site)`` at risky points (placing a component, each decode
chunk). Tests arm an out-of-memory error or any other error there instead of monkeypatching torch,
so the recovery paths (the manager's retry one mode lower, the decoders' halving) run for real.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch


class FaultInjector:
    """Test hook: make a named site raise, e.g. an OOM when a component is placed.

    Backends call ``manager.checkpoint(site)`` at risky points; ``use(name)`` fires site ``name``.
    Tests arm faults here instead of monkeypatching torch.
    """

    def __init__(self) -> None:
        self._armed: dict[str, list[Callable[[], BaseException]]] = {}
        self._lock = threading.Lock()

    def arm(self, site: str, times: int = 1, error: Callable[[], BaseException] | None = None) -> None:
        """Raise ``error()`` (default: ``torch.OutOfMemoryError``) the next ``times`` times ``site`` fires."""
        make = error or (lambda: torch.OutOfMemoryError(f"CUDA out of memory (injected at {site})"))
        with self._lock:
            self._armed.setdefault(site, []).extend([make] * times)

    def pending(self, site: str) -> int:
        """How many armed faults ``site`` has not raised yet (tests check every fault fired)."""
        with self._lock:
            return len(self._armed.get(site, []))

    def fire(self, site: str) -> None:
        with self._lock:
            pending = self._armed.get(site)
            make = pending.pop(0) if pending else None
        if make is not None:
            raise make()
