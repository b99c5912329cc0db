"""What ``real_sizes``' child measures while a family runs: peak RSS and the manager's placements.

``MemoryMonitor`` samples, every ``SAMPLE_S``, the kernel's peak RSS since the last sample
(``/proc/self/status`` VmHWM, reset through ``/proc/self/clear_refs``, Linux 4.0+) beside the
manager's placements; ``PlacementLog`` collects what the manager's own log says it evicted,
streamed, dropped or built. ``bench.real_sizes`` turns both into a row.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds between memory samples.
SAMPLE_S = 0.02
_KIB = 1024


class PlacementLog(logging.Handler):
    """Collects the manager's placement records: what was evicted, streamed, dropped or built.

    It reads ``backends.runtime.memory``'s own log records (the manager logs every move with its
    byte count, STYLE.md 7), matching the start of each message and taking the name argument.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.evicted: list[str] = []
        self.streamed: list[str] = []
        self.dropped: list[str] = []
        self.build_seconds = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        message, args = str(record.msg), record.args
        if not isinstance(args, tuple) or not args:
            return
        if message.startswith("evicted "):
            self.evicted.append(str(args[0]))
        elif message.startswith("dropped "):
            self.dropped.append(str(args[0]))
        elif message.startswith("placed ") and len(args) > 2 and args[2] == "offload":
            self.streamed.append(str(args[0]))
        elif message.startswith("loaded ") and len(args) > 2:
            self.build_seconds += float(args[2])


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM in bytes (Linux)."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, amount = line.split(":", 1)
                values[key] = int(amount.split()[0]) * _KIB
    return values


def _reset_peak() -> bool:
    """Reset the kernel's peak RSS (VmHWM, and with it ru_maxrss) to the current RSS (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        return True
    except OSError as error:
        logger.warning("cannot reset the peak RSS (%s); intervals use RSS samples instead", error)
        return False


class MemoryMonitor:
    """Samples peak RSS and the manager's placements in a thread (see the module docstring).

    Interval i runs from sample i-1 to sample i; its activations are its peak RSS less the
    baseline and less every loaded weight (the larger count of both ends, so a component loaded
    or dropped inside the interval is counted while it was there); its device figure adds the
    device-side weights (resident components and the largest block of streamed ones, again the
    larger of both ends). A component's activations are attributed to it only for intervals in
    which it was in use at both ends.
    """

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.baseline = 0
        self.peak_rss = 0
        self.peak_device = 0
        self.measured_working: dict[str, int] = {}
        self._blocks: dict[str, int] = {}
        self._state: tuple[int, int, frozenset[str]] = (0, 0, frozenset())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-monitor", daemon=True)
        self._resettable = False

    def start(self) -> None:
        figures = _proc_status()
        self.baseline, self.peak_rss = figures["VmRSS"], figures["VmHWM"]
        self._resettable = _reset_peak()
        self._state = self._placements()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def _placements(self) -> tuple[int, int, frozenset[str]]:
        """(bytes of every loaded weight, bytes on the device side, components in use) now."""
        loaded = device = 0
        active = set()
        for status in self.manager.statuses():
            comp = self.manager.component(status.name)
            if status.placement == "disk":
                continue
            loaded += status.bytes
            if status.placement == "gpu":
                device += status.bytes
            elif status.placement == "offload":
                home = comp.home
                if status.name not in self._blocks and home is not None:
                    self._blocks[status.name] = home.largest_block_bytes()
                device += self._blocks.get(status.name, 0)
            if comp.in_use:
                active.add(status.name)
        return loaded, device, frozenset(active)

    def _sample(self) -> None:
        state = self._placements()
        figures = _proc_status()
        peak = figures["VmHWM"] if self._resettable else figures["VmRSS"]
        if self._resettable:
            _reset_peak()
        (loaded0, device0, active0), (loaded1, device1, active1) = self._state, state
        self._state = state
        self.peak_rss = max(self.peak_rss, peak)
        activations = peak - self.baseline - max(loaded0, loaded1)
        self.peak_device = max(self.peak_device, activations + max(device0, device1))
        for name in active0 & active1:
            self.measured_working[name] = max(self.measured_working.get(name, 0), activations)
