"""Live memory readings: the probe the memory manager is given, and the sizes it speaks in.

DESIGN.md, "Memory policy": free and total device memory come from pynvml plus the memory PyTorch
has reserved but not allocated; RAM comes from psutil. The probe is an injectable object, so tests
pass a ``FakeProbe`` with the numbers they want instead of monkeypatching torch or pynvml.
``--vram-budget`` is parsed here too; the manager (``backends.runtime.memory``) applies it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import psutil
import torch

from backends.runtime.errors import StudioError

logger = logging.getLogger(__name__)

GB = 1024**3


def format_bytes(size: float) -> str:
    """Human-readable size for messages: GB above 1 GB, else MB."""
    return f"{size / GB:.2f} GB" if abs(size) >= GB else f"{size / 2**20:.1f} MB"


@dataclass(frozen=True)
class MemoryReading:
    """One live reading of device memory and RAM, in bytes."""

    device_name: str
    device_total: int
    device_free: int
    ram_total: int
    ram_free: int


class MemoryProbe(Protocol):
    """Anything that returns a live ``MemoryReading``."""

    def read(self) -> MemoryReading: ...


class SystemProbe:
    """Live readings: pynvml for the GPU plus torch's reserved-but-unallocated memory; psutil for RAM."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._nvml_handle: object | None = None
        self._nvml_tried = False

    def _handle(self) -> object | None:
        if not self._nvml_tried:
            self._nvml_tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml_handle = pynvml.nvmlDeviceGetHandleByIndex(self.device.index or 0)
            except Exception as error:  # pynvml raises its own error family (NVMLError_*)
                logger.warning("pynvml unavailable (%s); using torch.cuda.mem_get_info", error)
        return self._nvml_handle

    def read(self) -> MemoryReading:
        ram = psutil.virtual_memory()
        if self.device.type != "cuda":
            return MemoryReading("cpu", ram.total, ram.available, ram.total, ram.available)
        handle = self._handle()
        if handle is not None:
            import pynvml

            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            free, total = int(info.free), int(info.total)
        else:
            free, total = torch.cuda.mem_get_info(self.device)
        # Memory torch holds in its cache is free for our own next allocation.
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        name = f"{self.device} {torch.cuda.get_device_name(self.device)}"
        return MemoryReading(name, total, free, ram.total, ram.available)


class FixedDeviceProbe:
    """Device figures fixed in advance, RAM read live: for a device that cannot be read.

    On a ZeroGPU Space the app's own process has no GPU (``backends.runtime.zerogpu``): pynvml
    and ``torch.cuda`` must not be asked there. The device is taken as ``total`` bytes, all free;
    the manager's own accounting (its budget less what it placed) then decides what fits.
    """

    def __init__(self, name: str, total: int) -> None:
        if total <= 0:
            raise ValueError(f"total: must be a positive number of bytes, got {total}")
        self.name = name
        self.total = total

    def read(self) -> MemoryReading:
        ram = psutil.virtual_memory()
        return MemoryReading(self.name, self.total, self.total, ram.total, ram.available)


class FakeProbe:
    """A probe whose numbers tests set directly (attributes are plain and mutable)."""

    def __init__(self, device_total: int, device_free: int | None = None,
                 ram_total: int = 64 * GB, ram_free: int | None = None) -> None:
        self.device_total = device_total
        self.device_free = device_total if device_free is None else device_free
        self.ram_total = ram_total
        self.ram_free = ram_total if ram_free is None else ram_free

    def read(self) -> MemoryReading:
        return MemoryReading("fake", self.device_total, self.device_free, self.ram_total, self.ram_free)


def parse_budget_gb(value: float | None) -> int | None:
    """``--vram-budget`` in GB (decimal fractions allowed) to bytes; None or 0 means no cap."""
    if value is None or value == 0:
        return None
    if value < 0:
        raise StudioError(f"--vram-budget must be positive GB, got {value}")
    return int(value * GB)
