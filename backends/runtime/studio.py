"""The Studio: one object that holds what the command line configured.

It is built once by ``app.py`` from the parsed flags and the family specs (``backends/families.py``)
and handed to every tab, so no module reads flags or keeps global state. Building it reads the
preset and one memory reading; it loads no model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from backends.runtime import cpu_dtype, cpu_heap, presets, zerogpu
from backends.runtime.errors import StudioError, UnknownNameError
from backends.runtime.loading import LoadContext
from backends.runtime.memory import MemoryManager
from backends.runtime.outputs import OutputWriter
from backends.runtime.placement import Placement
from backends.runtime.probe import MemoryProbe, SystemProbe
from backends.runtime.progress import JobControl
from backends.runtime.registry import Registry
from backends.runtime.settings import preset_schema
from backends.runtime.spec import BackendSpec
from backends.runtime.tiny import TinyModels

logger = logging.getLogger(__name__)

#: Finished jobs whose length makes the average a waiting job is told: enough to smooth one odd
#: job out, few enough to follow a change of settings.
RECENT_JOBS = 20


@dataclass(frozen=True)
class StudioConfig:
    """The flags that shape the Studio (see DESIGN.md's command line table)."""

    preset: str = "auto"
    vram_budget_bytes: int | None = None
    models_dir: Path | None = None
    outputs_dir: Path = Path("outputs")
    cache_dir: Path = Path(".cache")
    offline: bool = False
    #: ``--cluster``: ``local`` or a Ray address; None runs everything in this process. The
    #: runtime only records it: ``app.build_studio`` attaches the cluster (``backends.cluster``).
    cluster: str | None = None
    #: ``--replicas``: None is one per GPU (CPU-only: 1).
    replicas: int | None = None
    #: A ZeroGPU Space (``backends.runtime.zerogpu``): device memory is planned from the GPU size
    #: the handlers ask for, never read (no pynvml), and host copies are not pinned.
    zero_gpu: bool = False


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class Studio:
    """Preset, memory manager, registry, outputs, Stop flags and recent job lengths of one running app."""

    def __init__(self, config: StudioConfig, families: Sequence[BackendSpec],
                 probe: MemoryProbe | None = None, clock: Callable[[], float] = time.monotonic,
                 cpu_features: Callable[[], cpu_dtype.CpuFeatures] = cpu_dtype.read_cpu_features) -> None:
        """Read the preset and one memory reading; no model loads.

        Args:
            config: the flags.
            families: the family specs to serve (``backends.families.FAMILIES``); they make the
                preset schema, the registry and the tiny builders.
            probe: live memory readings (tests pass a ``FakeProbe``).
            clock: seconds on a steady clock, for the jobs' times (tests pass a fake one).
            cpu_features: reads the CPU's bf16 support, for ``dtype: auto`` on the CPU (tests
                pass their own).
        """
        self.config = config
        schema = preset_schema(families)
        cuda = _cuda_available()
        name = config.preset
        if name == "auto":
            if config.zero_gpu:  # no GPU to measure outside a GPU call (app.parse_args picks it too)
                name = zerogpu.SPACE_PRESET
            else:
                total = SystemProbe(_device("cuda")).read().device_total if cuda else None
                name = presets.pick_auto(total, schema)
            logger.info("preset auto -> %s", name)
        self.preset = presets.load(name, schema)
        wanted = self.preset.settings.device
        device = "cuda" if (wanted == "cuda" or (wanted == "auto" and cuda)) else "cpu"
        if wanted == "cuda" and not cuda:
            logger.warning("preset %s asks for CUDA but none is available; using the CPU", name)
            device = "cpu"
        self.device = _device(device)
        # dtype auto becomes concrete here, for the device just picked: backends never see it.
        settings, self.dtypes = cpu_dtype.resolve(self.preset.settings, device, cpu_features)
        self.preset = dataclasses.replace(self.preset, settings=settings)
        # The tiny preset needs no hub at all; being offline also makes a missing file fail at once.
        self.offline = config.offline or self.preset.name == "tiny"
        if self.offline:
            os.environ["HF_HUB_OFFLINE"] = "1"
        # On the CPU the budget caps RAM: freed activations must leave the process (cpu_heap).
        self.heap_threshold = (cpu_heap.bound_heap()
                               if self.device.type == "cpu" and config.vram_budget_bytes else None)
        if probe is None:
            probe = zerogpu.probe() if config.zero_gpu else SystemProbe(self.device)
        self.manager = MemoryManager(probe, self.device, budget_bytes=config.vram_budget_bytes,
                                     pin_host_copies=not config.zero_gpu)
        ctx = LoadContext(cache_dir=Path(config.cache_dir), models_dir=config.models_dir,
                          offline=self.offline,
                          tiny=TinyModels(spec.tiny for spec in families if spec.tiny is not None))
        self.ctx = ctx
        self.registry = Registry(self.preset.settings, self.manager, ctx, families, preset_name=self.preset.name)
        self.outputs = OutputWriter(Path(config.outputs_dir))
        #: With ``--cluster``, what runs the jobs (``backends.cluster.front.attach`` sets it, and
        #: ``registry.remote``); it answers ``replicas_status``, ``unload``, ``replicas``, ``close``.
        self.cluster: Any = None
        self._jobs: dict[str, JobControl] = {}
        self._jobs_lock = threading.Lock()
        self._clock = clock
        self._durations: deque[float] = deque(maxlen=RECENT_JOBS)
        logger.info("studio: preset %s on %s, budget %s, outputs %s", self.preset.name, self.device,
                    config.vram_budget_bytes, config.outputs_dir)

    @property
    def gpu_slots(self) -> int:
        """How many GPU jobs may run at once: one per replica with ``--cluster``, else one."""
        return self.cluster.replicas if self.cluster is not None else 1

    def close(self) -> None:
        """Leave the cluster, if any (the app's shutdown; tests)."""
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def preload(self, headroom_bytes: int = zerogpu.PRELOAD_HEADROOM_BYTES) -> list[str]:
        """Load every family of the preset now and place its components on the device, before any request.

        For ZeroGPU, whose docs have models put on ``cuda`` when the Space starts: inside a GPU
        call loading is much slower, and what a call loads ends with its process
        (``backends.runtime.zerogpu``). Families come in the registry's order, each component in
        the order its backend registered it. A component the backend runs from RAM (``host_only``,
        SD3.5's T5 with ``t5: cpu``) stays there. A component is placed while ``headroom_bytes`` stay
        free beside it for a job's activations, and is otherwise left in RAM for the manager to
        upload inside the call; so are the components of a family whose memory mode is
        ``offload`` or ``sequential``, which the first job would take off the device again. A
        family whose files or weights cannot be had (a gated repo without a token) is logged and
        skipped: its first request fails with the same message, and the other tabs serve.
        Calling it again places what now fits and leaves the rest where it is.

        Returns:
            The names of the components on the device.
        """
        manager = self.manager
        started = time.perf_counter()
        placed: list[str] = []
        in_ram: list[str] = []
        for family in self.registry.specs:
            try:
                self.registry.ensure_files(family)
                self.registry.backend(family)
                names = [s.name for s in manager.statuses() if s.name.startswith(f"{family}.")]
                for name in names:
                    if manager.component(name).placement is Placement.DISK:
                        with manager.use(name, host=True):  # read from disk into RAM, device untouched
                            pass
            except StudioError as error:
                logger.warning("preload: %s not loaded: %s", family, error)
                continue
            resident = self.registry.settings(family).memory_mode in ("auto", "gpu")
            for name in names:
                component = manager.component(name)
                if component.placement is not Placement.GPU and (component.host_only or not (
                        resident and component.size + headroom_bytes <= manager.usable_free())):
                    in_ram.append(name)
                    continue
                with manager.use(name):  # stays resident: the memory mode is auto or gpu
                    pass
                placed.append(name)
        on_device = sum(manager.component(name).size for name in placed)
        logger.info("preloaded %d components (%.2f GB) onto %s in %.1f s; left in RAM: %s", len(placed),
                    on_device / 1e9, self.device, time.perf_counter() - started, ", ".join(in_ram) or "none")
        return placed

    # ----- Stop buttons: one flag per browser session ------------------------------------------
    def start_job(self, session: str) -> JobControl:
        """A fresh Stop flag for this session's next job."""
        control = JobControl(self._clock)
        with self._jobs_lock:
            self._jobs[session] = control
        return control

    def stop_job(self, session: str) -> bool:
        """Press Stop for this session's running job; False when none is running."""
        with self._jobs_lock:
            control = self._jobs.get(session)
        if control is None:
            return False
        control.cancel()
        return True

    def running_sessions(self) -> list[str]:
        """The sessions whose job is running now (for tests and logs)."""
        with self._jobs_lock:
            return list(self._jobs)

    def finish_job(self, session: str, control: JobControl) -> None:
        """Forget this session's job; a job that ran to its end adds its length to the average."""
        with self._jobs_lock:
            if self._jobs.get(session) is control:
                del self._jobs[session]
            if not control.halted:
                self._durations.append(control.elapsed())

    def queue_wait(self) -> dict[str, float | None]:
        """What a job waiting behind others needs to say how long it will wait.

        Returns:
            ``running_left_s``: the seconds the running job has left (the longest, should there
            be several): at its rate since its first progress report, or else the average less
            its time so far, never below 0; None when no job runs or nothing is known yet. ``average_s``: the
            average length of the last ``RECENT_JOBS`` jobs that ran to their end; None before
            the first.
        """
        with self._jobs_lock:
            running = list(self._jobs.values())
            recent = list(self._durations)
        average = sum(recent) / len(recent) if recent else None
        lefts = []
        for control in running:
            left = control.seconds_left()
            if left is None and average is not None:
                left = max(0.0, average - control.elapsed())
            if left is not None:
                lefts.append(left)
        return {"running_left_s": max(lefts) if lefts else None, "average_s": average}

    # ----- /status and /unload -------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The ``/status`` JSON: device, live memory (budget applied), preset, dtypes, components.

        ``dtypes`` maps each family to the dtype it runs in; ``cpu_capability`` and ``cpu_bf16``
        (None on CUDA) and ``dtype_reason`` say why (``backends.runtime.cpu_dtype``).
        ``cpu_heap_threshold`` is the malloc threshold fixed for a budget on the CPU, or None
        (``backends.runtime.cpu_heap``).
        """
        reading = self.manager.reading()
        return {
            "device": reading.device_name if self.device.type == "cuda" else "cpu",
            "vram_total": reading.device_total,
            "vram_free": reading.device_free,
            "ram_total": reading.ram_total,
            "ram_free": reading.ram_free,
            "preset": self.preset.name,
            "budget": self.config.vram_budget_bytes,
            "cpu_heap_threshold": self.heap_threshold,
            **self.dtypes.status(),
            "models": [
                {"name": s.name, "placement": s.placement, "bytes": s.bytes, "last_used": s.last_used}
                for s in self.manager.statuses()
            ],
            **({"cluster": self.config.cluster, "replicas": self.cluster.replicas_status()}
               if self.cluster is not None else {}),
        }

    def missing_files(self) -> list[str]:
        """What this preset still needs from the hub, one line per repo (local check only)."""
        from backends.runtime import downloads

        return [m.describe() for m in downloads.missing(downloads.plan(self.preset.settings), self.ctx)]

    def download_all(self, progress: Any = None) -> int:
        """Fetch every file this preset needs; returns the bytes downloaded."""
        from backends.runtime import downloads

        fetched = downloads.download_preset(self.preset, self.ctx, progress)
        return sum(f.to_fetch for f in fetched)

    def unload(self, name: str, replica: str | None = None) -> dict[str, Any]:
        """Drop a component, a whole backend (``cascade``) or ``all`` from memory; return status.

        With ``--cluster`` the replicas hold the models: every live one, or only ``replica``, is
        asked to unload (their heartbeat, waiting on the cluster's board, is answered at once;
        ``/status`` shows it within a second).
        """
        name = name.strip()
        if self.cluster is not None:
            if name != "all" and name.split(".")[0] not in self.registry.specs:
                known = ["all", *self.registry.specs, "<family>.<component>"]
                raise UnknownNameError(f"Unknown model {name!r}; known: {', '.join(known)}")
            self.cluster.unload(name, replica)
            return self.status()
        try:
            dropped = self.manager.unload(name)
        except UnknownNameError:
            if name not in self.registry.specs:
                known = ["all", *self.registry.specs, *(s.name for s in self.manager.statuses())]
                raise UnknownNameError(f"Unknown model {name!r}; known: {', '.join(known)}") from None
            dropped = []  # a known backend that has loaded nothing yet
        logger.info("unloaded %s", ", ".join(dropped) or "nothing")
        return self.status()


def _device(name: str) -> Any:
    import torch

    return torch.device(name)
