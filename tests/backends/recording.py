"""A memory manager wrapper for backend tests: which components each stage holds, with what estimate."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from backends.runtime.memory import MemoryManager


class Recording:
    """Wraps the manager and records each ``use`` with the working memory asked for."""

    def __init__(self, inner: MemoryManager) -> None:
        self.inner, self.device = inner, inner.device
        #: ("enter" or "exit", component name, working bytes asked for), in order.
        self.events: list[tuple[str, str, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @contextlib.contextmanager
    def use(self, name: str, working: int | Callable[[torch.nn.Module], int] = 0, *,
            host: bool = False) -> Iterator[torch.nn.Module]:
        with self.inner.use(name, working, host=host) as module:
            need = working(module) if callable(working) else working
            self.events.append(("enter", name, need))
            yield module
            self.events.append(("exit", name, need))
