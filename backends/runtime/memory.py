"""The memory manager: places model components on the device from live memory readings.

Policy (DESIGN.md, "Memory policy"): a component's need is its size plus the request's working
memory plus a reserve. The least recently used other components are evicted until the live free
memory covers the need. Eviction frees the device copy only (the CPU copy stays, see
``backends.runtime.offload``); a component is dropped from RAM too when RAM is short. A component too big
for the whole budget streams its blocks (sequential offload). An out-of-memory error during a run
evicts everything, empties the cache and retries once in the next lower memory mode.

The probe is injected so tests drive the policy with a fake one; nothing here is module state.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import threading
import time
from typing import Callable, Iterator, TypeVar

import torch
from torch import nn

from backends.runtime.errors import OutOfMemory, UnknownNameError
from backends.runtime.faults import FaultInjector
from backends.runtime.offload import TensorHome, module_bytes
from backends.runtime.placement import Component, ComponentStatus, MemoryMode, Placement
from backends.runtime.probe import GB, MemoryProbe, MemoryReading, format_bytes

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Kept free on a CUDA device on top of each need: the CUDA context, cuBLAS/cuDNN workspaces and
#: allocator fragmentation take 0.5-1 GB that no tensor accounts for, and the 5 % covers
#: activation spikes that working-memory estimates miss (same order as ComfyUI/Forge reserves).
CUDA_RESERVE_BYTES = int(0.8 * GB)
#: The CPU "device" has no context or workspaces; only the proportional part applies.
RESERVE_FRACTION = 0.05
#: RAM left to the OS and the app when deciding whether an evicted copy may stay in RAM.
RAM_MARGIN_BYTES = 1 * GB


class MemoryManager:
    """Places registered components on one device within a budget; thread-safe."""

    def __init__(self, probe: MemoryProbe, device: torch.device | str = "cpu",
                 budget_bytes: int | None = None, reserve_bytes: int | None = None,
                 ram_margin_bytes: int = RAM_MARGIN_BYTES, pin_host_copies: bool = True) -> None:
        """Args:
            probe: live memory readings (``SystemProbe`` or ``FakeProbe``).
            device: the compute device.
            budget_bytes: ``--vram-budget``; caps device memory, on the CPU device too.
            reserve_bytes: fixed headroom; default 0.8 GB on CUDA, 0 on CPU (see constants).
            ram_margin_bytes: RAM kept free when deciding to keep an evicted CPU copy.
            pin_host_copies: page-lock the CPU copies on CUDA when RAM allows. False on ZeroGPU,
                where the app's own process has no CUDA driver to pin with
                (``backends.runtime.zerogpu``).
        """
        self.probe = probe
        self.device = torch.device(device)
        self.budget_bytes = budget_bytes
        if reserve_bytes is None:
            reserve_bytes = CUDA_RESERVE_BYTES if self.device.type == "cuda" else 0
        self.reserve_bytes = reserve_bytes
        self.ram_margin_bytes = ram_margin_bytes
        self.pin_host_copies = pin_host_copies
        self.faults = FaultInjector()
        self._components: dict[str, Component] = {}
        self._hints: dict[str, int] = {}
        self._lock = threading.RLock()  # guards component state; held briefly
        # One job (a whole run) at a time. A plain Lock, not an RLock: a streamed job is iterated
        # by whichever worker thread Gradio picks for each step, and only a Lock may be released
        # by a thread other than the one that took it.
        self._job_lock = threading.Lock()
        self._mode = MemoryMode.AUTO
        self._retried_from: MemoryMode | None = None
        self._clock = itertools.count(1)
        #: Jobs that ran out of device memory and were retried one mode lower (tests and logs
        #: read these to prove the retry path ran; they only ever grow).
        self.oom_retries = 0
        #: Jobs that ran out of memory for good: the user got ``OutOfMemory``.
        self.oom_failures = 0
        self._largest_working: dict[str, int] = {}  # see ``largest_working``

    @property
    def mode(self) -> MemoryMode:
        """The memory mode of the job now running (AUTO between jobs)."""
        return self._mode

    def retried_from(self) -> MemoryMode | None:
        """Inside a job: the mode that ran out of memory when this attempt is the retry, else None.

        Lets the caller tell the user that the result came from the slower, lower mode.
        """
        return self._retried_from

    # ----- registration and readings -------------------------------------------------------
    def register(self, name: str, loader: Callable[[], nn.Module], *, size_hint: int = 0,
                 host_only: bool = False) -> None:
        """Declare a component; nothing is loaded until its first ``use``. Idempotent.

        ``host_only``: the backend always uses it from RAM (``use(..., host=True)``).
        """
        with self._lock:
            if name not in self._components:
                size = size_hint or self._hints.get(name, 0)
                self._components[name] = Component(name, loader, size, host_only=host_only)

    def hint_size(self, name: str, size: int) -> None:
        """Set a component's expected bytes before it loads (for /status and the RAM check).

        A hint may come before the component is registered (backends register some components
        only when a task first needs them); it is applied then.
        """
        with self._lock:
            self._hints[name] = size
            comp = self._components.get(name)
            if comp is not None and comp.home is None:
                comp.size = size

    def reading(self) -> MemoryReading:
        """The live reading with the budget applied to the device figures."""
        raw = self.probe.read()
        capacity = self._capacity(raw)
        return MemoryReading(raw.device_name, capacity, max(self._free(raw), 0), raw.ram_total, raw.ram_free)

    def usable_free(self) -> int:
        """Live free device memory (budget applied) less the reserve: what a stage may still use."""
        raw = self.probe.read()
        return max(self._free(raw), 0) - self._reserve(raw)

    def room_beside(self, size: int) -> int:
        """Working memory the whole budget leaves beside ``size`` bytes of weights."""
        raw = self.probe.read()
        return self._capacity(raw) - self._reserve(raw) - size

    def statuses(self) -> list[ComponentStatus]:
        with self._lock:
            return [ComponentStatus(c.name, c.placement.value, c.size, c.last_used or None)
                    for c in self._components.values()]

    def largest_working(self) -> dict[str, int]:
        """Per component, the most working memory any ``use`` of it has asked for so far.

        Read-only; benchmarks compare it with the memory they measure around each stage.
        """
        with self._lock:
            return dict(self._largest_working)

    def component(self, name: str) -> Component:
        with self._lock:
            if name not in self._components:
                known = ", ".join(sorted(self._components)) or "none loaded yet"
                raise UnknownNameError(f"Unknown model {name!r}; known: {known}")
            return self._components[name]

    def _capacity(self, raw: MemoryReading) -> int:
        return min(raw.device_total, self.budget_bytes) if self.budget_bytes else raw.device_total

    def _resident(self) -> int:
        return sum(c.size for c in self._components.values() if c.placement is Placement.GPU)

    def _free(self, raw: MemoryReading) -> int:
        # The live reading sees other processes; the budget is our own accounting. Trust the smaller.
        return min(raw.device_free, self._capacity(raw) - self._resident())

    def _reserve(self, raw: MemoryReading) -> int:
        return self.reserve_bytes + int(RESERVE_FRACTION * self._capacity(raw))

    # ----- running jobs --------------------------------------------------------------------
    def run(self, fn: Callable[[], T], mode: MemoryMode | str = MemoryMode.AUTO, what: str = "the job") -> T:
        """Run one job; on device OOM evict everything, empty the cache and retry one mode lower.

        Raises:
            OutOfMemory: the retry ran out of memory too (or there was no lower mode); every
                component is then back in RAM, with no half-placed weights.
        """
        mode = MemoryMode(mode)
        with self._job_lock:
            try:
                return self._with_mode(mode, fn)
            except torch.OutOfMemoryError as first:
                lower = self._after_oom(what, mode, first, retry=True)
                if lower is None:
                    raise OutOfMemory(self._oom_message(what, [mode])) from first
                try:
                    return self._with_mode(lower, fn, retried_from=mode)
                except torch.OutOfMemoryError as second:
                    self._after_oom(what, lower, second, retry=False)
                    raise OutOfMemory(self._oom_message(what, [mode, lower])) from second

    def stream(self, fn: Callable[[], Iterator[T]], mode: MemoryMode | str = MemoryMode.AUTO,
               what: str = "the job") -> Iterator[T]:
        """Like ``run`` for a job that yields results as it goes (chat tokens).

        The job holds the device only while it is iterated, so other jobs run between turns. An
        OOM before the first item retries once one mode lower; after items were given out the
        job cannot be restarted invisibly, so it evicts everything and raises ``OutOfMemory``.
        Closing the iterator early (Stop) ends the job and releases everything it held.
        """
        mode = MemoryMode(mode)
        with self._job_lock:
            attempts = [mode, *([mode.lower()] if mode.lower() else [])]
            for attempt, current in enumerate(attempts):
                previous, self._mode = self._mode, current
                self._retried_from = attempts[0] if attempt else None
                produced = False
                try:
                    for item in fn():
                        produced = True
                        yield item
                    return
                except torch.OutOfMemoryError as error:
                    last = produced or attempt == len(attempts) - 1
                    self._after_oom(what, current, error, retry=not last)
                    if last:
                        raise OutOfMemory(self._oom_message(what, attempts[: attempt + 1])) from error
                finally:
                    self._mode, self._retried_from = previous, None

    def _after_oom(self, what: str, mode: MemoryMode, error: BaseException, retry: bool) -> MemoryMode | None:
        """Log and count an OOM, free the device; returns the mode to retry in (None: give up)."""
        lower = mode.lower() if retry else None
        if lower is not None:
            self.oom_retries += 1
            logger.warning("out of memory in %s (%s mode): %s; evicting everything and retrying in %s mode",
                           what, mode.value, error, lower.value)
        else:
            self.oom_failures += 1
            logger.warning("out of memory in %s (%s mode): %s; giving up", what, mode.value, error)
        self.evict_all()
        return lower

    def _with_mode(self, mode: MemoryMode, fn: Callable[[], T], retried_from: MemoryMode | None = None) -> T:
        previous, self._mode, self._retried_from = self._mode, mode, retried_from
        try:
            return fn()
        finally:
            self._mode, self._retried_from = previous, None

    def _oom_message(self, what: str, modes: list[MemoryMode]) -> str:
        raw = self.probe.read()
        tried = " then ".join(m.value for m in modes)
        return (f"Out of device memory running {what} (tried {tried} mode). Budget "
                f"{format_bytes(self._capacity(raw))}, free {format_bytes(max(self._free(raw), 0))}. "
                "Try a smaller request (a smaller size, fewer images or frames, a shorter reply), "
                "close other programs that use the GPU, or start the app with a lighter preset "
                "(--preset lite or cpu). The app is still running.")

    def checkpoint(self, site: str) -> None:
        """A point where tests may inject a fault (see ``FaultInjector``)."""
        self.faults.fire(site)

    @contextlib.contextmanager
    def use(self, name: str, working_bytes: int | Callable[[nn.Module], int] = 0, *,
            host: bool = False) -> Iterator[nn.Module]:
        """Load if needed, make room, place the component for the current mode, and yield it.

        Args:
            name: a registered component.
            working_bytes: activation memory this use needs on top of the weights, or a function
                of the loaded (CPU) module that computes it, so estimates can read its config.
            host: lend the RAM copy and leave the device alone (SD3.5's T5 with ``t5: cpu``): the
                component is still loaded, listed in ``/status``, unloadable and dropped for RAM
                like any other; a resident device copy is taken off first.
        """
        comp = self.component(name)
        with self._lock:
            self._ensure_loaded(comp)
            assert comp.home is not None
            working = working_bytes(comp.home.module) if callable(working_bytes) else working_bytes
            self._largest_working[name] = max(self._largest_working.get(name, 0), working)
            if host:
                if comp.placement is not Placement.CPU and comp.in_use == 0:
                    comp.home.to_home()
                    comp.placement = Placement.CPU
                placement = comp.placement
            else:
                placement = self._place(comp, working)
            comp.in_use += 1
            self._touch(comp)
        try:
            self.faults.fire(name)
            assert comp.home is not None
            yield comp.home.module
        finally:
            with self._lock:
                comp.in_use -= 1
                self._touch(comp)
                if placement is Placement.OFFLOAD and comp.home is not None:
                    comp.home.to_home()
                    comp.placement = Placement.CPU
                elif self._mode is MemoryMode.OFFLOAD and comp.placement is Placement.GPU:
                    self._evict(comp)

    def _touch(self, comp: Component) -> None:
        comp.last_used = time.time()
        comp.order = next(self._clock)

    # ----- placement -----------------------------------------------------------------------
    def _ensure_loaded(self, comp: Component) -> None:
        if comp.home is not None:
            return
        raw = self.probe.read()
        freed = 0
        while raw.ram_free + freed - self.ram_margin_bytes < comp.size:
            dropped = self._drop_lru_from_ram(comp)
            if not dropped:
                logger.warning("loading %s (%.1f MB) with little free RAM", comp.name, comp.size / 2**20)
                break
            freed += dropped
        started = time.perf_counter()
        module = comp.loader()
        size = module_bytes(module)
        pin = (self.pin_host_copies and self.device.type == "cuda"
               and raw.ram_free - self.ram_margin_bytes > 2 * size)
        comp.home = TensorHome(module, pin=pin)
        comp.size, comp.placement, comp.loads = size, Placement.CPU, comp.loads + 1
        logger.info("loaded %s: %.1f MB in %.2f s (pinned=%s)", comp.name, size / 2**20,
                    time.perf_counter() - started, pin)

    def _drop_lru_from_ram(self, keep: Component) -> int:
        """Drop the least recently used idle component, RAM-only ones first; returns its bytes."""
        idle = [c for c in self._components.values()
                if c is not keep and c.home is not None and c.in_use == 0]
        if not idle:
            return 0
        victim = min(idle, key=lambda c: (c.placement is Placement.GPU, c.order))
        self._drop(victim)
        return victim.size

    def _place(self, comp: Component, working_bytes: int) -> Placement:
        assert comp.home is not None
        if comp.placement is Placement.GPU:
            # Already resident, but this use may need more working memory than the last one
            # (a VAE that encoded one picture now decodes a chunk of frames).
            raw = self.probe.read()
            need = working_bytes + self._reserve(raw)
            freed = self._make_room(need, exclude=comp, raw=raw)
            if need <= min(raw.device_free + freed, self._capacity(raw) - self._resident()) or comp.in_use:
                return Placement.GPU
            # Its weights and this use's activations do not fit together: placed afresh below it
            # streams (or is refused) like a component that was not resident.
            if self._mode is MemoryMode.GPU:
                raise OutOfMemory(
                    f"{comp.name} is on the device but this use needs {format_bytes(need)} of working memory "
                    f"beside it, more than the budget leaves (memory mode gpu). Use memory_mode auto or "
                    "offload, or a smaller request.")
            logger.info("%s is resident but %.2f GB of working memory does not fit beside it; placing it afresh",
                        comp.name, need / GB)
            self._evict(comp)
            if comp.home is None:
                self._ensure_loaded(comp)
                assert comp.home is not None
        raw = self.probe.read()
        reserve = self._reserve(raw)
        need = comp.size + working_bytes + reserve
        others = sum(c.size for c in self._components.values()
                     if c.placement is Placement.GPU and c is not comp)
        reachable = min(raw.device_free + others, self._capacity(raw))
        stream = self._mode is MemoryMode.SEQUENTIAL
        if not stream and need > reachable:
            if self._mode is MemoryMode.GPU:
                raise OutOfMemory(
                    f"{comp.name} needs {format_bytes(need)} but at most {format_bytes(reachable)} can be "
                    "freed (memory mode gpu). Use memory_mode auto or offload, or a lighter preset.")
            logger.info("%s (%.2f GB) does not fit %.2f GB; streaming its blocks", comp.name,
                        need / GB, reachable / GB)
            stream = True
        if stream:
            need = comp.home.largest_block_bytes() + working_bytes + reserve
        freed = self._make_room(need, exclude=comp, raw=raw)
        if need > min(raw.device_free + freed, self._capacity(raw) - self._resident()):
            raise OutOfMemory(
                f"{comp.name} needs {format_bytes(need)} even when streamed block by block, but the "
                f"budget is {format_bytes(self._capacity(raw))}. Raise --vram-budget, free GPU memory "
                "or use the cpu preset.")
        started = time.perf_counter()
        if stream:
            comp.home.start_streaming(self.device)
            comp.placement = Placement.OFFLOAD
        else:
            comp.home.to_device(self.device)
            comp.placement = Placement.GPU
        logger.info("placed %s on %s as %s (%.1f MB) in %.3f s", comp.name, self.device,
                    comp.placement.value, comp.size / 2**20, time.perf_counter() - started)
        return comp.placement

    def _make_room(self, need: int, exclude: Component, raw: MemoryReading) -> int:
        """Evict least recently used idle components until ``need`` fits; returns bytes freed."""
        freed = 0
        while min(raw.device_free + freed, self._capacity(raw) - self._resident()) < need:
            candidates = [c for c in self._components.values()
                          if c.placement is Placement.GPU and c is not exclude and c.in_use == 0]
            if not candidates:
                break
            victim = min(candidates, key=lambda c: c.order)
            freed += victim.size
            self._evict(victim)
        return freed

    def _evict(self, comp: Component) -> None:
        """Free the device copy; keep the CPU copy if RAM allows, else drop the component."""
        assert comp.home is not None
        comp.home.to_home()
        raw = self.probe.read()
        if raw.ram_free < self.ram_margin_bytes:
            self._drop(comp)
            return
        comp.placement = Placement.CPU
        logger.info("evicted %s (%.1f MB) to RAM", comp.name, comp.size / 2**20)

    def _drop(self, comp: Component, collect: bool = True) -> None:
        if comp.home is not None:
            comp.home.to_home()
        comp.home = None
        comp.placement = Placement.DISK
        if collect:
            gc.collect()
        logger.info("dropped %s (%.1f MB) from memory", comp.name, comp.size / 2**20)

    # ----- public eviction -----------------------------------------------------------------
    def evict_all(self) -> None:
        """Take every component off the device (after an OOM) and empty torch's cache."""
        with self._lock:
            for comp in self._components.values():
                if comp.home is not None and comp.placement in (Placement.GPU, Placement.OFFLOAD):
                    comp.home.to_home()
                    comp.placement = Placement.CPU
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def unload(self, name: str) -> list[str]:
        """Drop components from memory: a component name, a prefix like ``cascade``, or ``all``.

        Waits for a running job to finish, so nothing is pulled from under it.
        """
        with self._job_lock, self._lock:
            if name == "all":
                chosen = list(self._components.values())
            else:
                chosen = [c for c in self._components.values()
                          if c.name == name or c.name.startswith(name + ".")]
            if not chosen and name != "all":  # "all" with nothing loaded has nothing to do
                known = ", ".join(["all", *sorted(self._components)])
                raise UnknownNameError(f"Unknown model {name!r}; known: {known}")
            loaded = [c for c in chosen if c.placement is not Placement.DISK]
            for comp in loaded:
                self._drop(comp, collect=False)
            if loaded:  # one full collection for the lot: each costs ~0.5-1 s in a 570k-object app
                gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return [c.name for c in chosen]
