"""The vocabulary of placement: memory modes, where a component is, and a managed component's record.

Split from the manager (``backends.runtime.memory``) so that backends, tabs and tests can speak of
modes and placements without the manager's machinery; ``Component`` is the manager's own record of
one module, ``ComponentStatus`` what ``/status`` shows of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

from torch import nn

from backends.runtime.offload import TensorHome


class Placement(str, Enum):
    """Where a component's weights are now (the ``placement`` of ``/status``)."""

    GPU = "gpu"  # resident on the compute device (on a CPU-only machine: counted against the budget)
    CPU = "cpu"  # in RAM only, one upload away
    DISK = "disk"  # not loaded
    OFFLOAD = "offload"  # streaming block by block while it runs


class MemoryMode(str, Enum):
    """How components are placed; an OOM retries one step down the chain."""

    AUTO = "auto"  # resident, LRU eviction; streams a component too big for the budget
    GPU = "gpu"  # resident, LRU eviction; a component too big for the budget is an error
    OFFLOAD = "offload"  # on the device only while in use (model CPU offload)
    SEQUENTIAL = "sequential"  # always stream blocks; the least memory, the slowest

    def lower(self) -> "MemoryMode | None":
        """The next mode that needs less memory, or None at the bottom."""
        order = {MemoryMode.AUTO: MemoryMode.OFFLOAD, MemoryMode.GPU: MemoryMode.OFFLOAD,
                 MemoryMode.OFFLOAD: MemoryMode.SEQUENTIAL}
        return order.get(self)


@dataclass
class Component:
    """One managed module."""

    name: str
    loader: Callable[[], nn.Module]
    size: int
    placement: Placement = Placement.DISK
    last_used: float = 0.0  # wall clock, for /status
    order: int = 0  # LRU order (monotonic counter, immune to clock changes)
    in_use: int = 0
    home: TensorHome | None = None
    loads: int = 0  # how often it was read from disk (tests assert reuse)
    #: Runs from its RAM copy only (``use(..., host=True)``, SD3.5's T5 with ``t5: cpu``), so
    #: placing it on the device ahead of a job (``Studio.preload``) would only waste the memory.
    host_only: bool = False


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    placement: str
    bytes: int
    last_used: float | None
