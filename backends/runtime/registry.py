"""The backend registry: family specs in, name -> lazily imported backend, one ``run``.

Tabs only ever call ``Registry.run(task, request, progress)``. The registry is handed the family
specs (``backends/families.py``) and names none itself. It finds the backend that serves the task,
constructs it on first use (importing its module then, so start-up costs nothing), and runs it
under the memory manager, which owns placement and the OOM retry. Like timm's ``_registry``, it is
small and typed, and an unknown name fails loudly with the known ones.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
from typing import Any, Iterator, Protocol, Sequence

from backends.runtime.errors import UnknownNameError
from backends.runtime.loading import TINY_PREFIX, LoadContext
from backends.runtime.memory import MemoryManager
from backends.runtime.placement import MemoryMode
from backends.runtime.progress import ProgressFn
from backends.runtime.settings import PresetBase
from backends.runtime.spec import BackendSpec

logger = logging.getLogger(__name__)


class Backend(Protocol):
    """What every model family's backend provides (see ``backends/cascade/backend.py``)."""

    name: str
    tasks: tuple[str, ...]

    def run(self, task: str, request: Any, progress: ProgressFn) -> Any: ...


class RemoteRunner(Protocol):
    """Runs jobs elsewhere (``--cluster``): ``Registry.run``/``stream`` with the family named."""

    def run(self, family: str, task: str, request: Any, progress: ProgressFn) -> Any: ...

    def stream(self, family: str, task: str, request: Any, progress: ProgressFn) -> Iterator[Any]: ...


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class Registry:
    """Maps task and backend names to lazily built backends and runs them under the manager."""

    def __init__(self, preset: PresetBase, manager: MemoryManager, ctx: LoadContext,
                 specs: Sequence[BackendSpec], preset_name: str = "") -> None:
        self.preset = preset
        self.preset_name = preset_name
        self.manager = manager
        self.ctx = ctx
        self.specs = _checked(specs)
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()
        #: With ``--cluster``: runs every job on a replica instead (``backends.cluster.front.ClusterRunner``),
        #: whose own registry does the work; this one then only answers questions about the preset.
        self.remote: RemoteRunner | None = None

    def spec(self, name: str) -> BackendSpec:
        if name not in self.specs:
            raise UnknownNameError(f"Unknown backend {name!r}; known: {', '.join(self.specs)}")
        return self.specs[name]

    def tasks(self) -> list[str]:
        return [task for spec in self.specs.values() for task in spec.tasks]

    def spec_for_task(self, task: str) -> BackendSpec:
        for spec in self.specs.values():
            if task in spec.tasks:
                return spec
        raise UnknownNameError(f"Unknown task {task!r}; known: {', '.join(self.tasks())}")

    def models(self) -> dict[str, str]:
        """The SD endpoints' ``model`` values this preset offers, each with the family serving it.

        A family lists the values it can serve in ``spec.models`` and its settings' ``offer`` says
        which of them the preset offers, in that order; families come in ``FAMILIES`` order.
        """
        offered: dict[str, str] = {}
        for spec in self.specs.values():
            if not spec.models:
                continue
            wanted = getattr(self.settings(spec.name), "offer", spec.models)
            unknown = [model for model in wanted if model not in spec.models]
            if unknown:
                raise UnknownNameError(f"{spec.name}.offer names {', '.join(unknown)}; {spec.family} serves "
                                       f"{', '.join(spec.models)}")
            offered.update((model, spec.name) for model in wanted)
        return offered

    def default_model(self) -> str:
        """The preset's ``sd_model``, or else the first model it offers ("" when it offers none)."""
        offered = self.models()
        chosen = getattr(self.preset, "sd_model", "")
        if chosen and chosen not in offered:
            raise UnknownNameError(f"sd_model {chosen!r} is not offered by this preset; it offers "
                                   f"{', '.join(offered) or 'no SD model'}")
        return chosen or next(iter(offered), "")

    def model_task(self, model: str, kind: str) -> str:
        """The task serving ``kind`` (``text_to_image``, ``img2img``, ``inpaint``) for an offered model."""
        offered = self.models()
        if model not in offered:
            raise UnknownNameError(f"Unknown model {model!r}; this preset offers {', '.join(offered) or 'none'}")
        return f"{offered[model]}_{kind}"

    def settings(self, name: str) -> Any:
        """The preset section of backend ``name``."""
        return getattr(self.preset, self.spec(name).settings_key)

    def backend(self, name: str) -> Backend:
        """The backend object, imported and constructed on first use (loads no weights)."""
        spec = self.spec(name)
        with self._lock:
            if name not in self._backends:
                module_name, class_name = spec.factory.split(":")
                cls = getattr(importlib.import_module(module_name), class_name)
                backend = cls(self.settings(name), self.manager, self.ctx)
                for component, size in self._component_sizes(name).items():
                    self.manager.hint_size(component, size)
                self._backends[name] = backend
                logger.info("backend %s ready (%s)", name, spec.family)
            return self._backends[name]

    def run(self, task: str, request: Any, progress: ProgressFn) -> Any:
        """Run ``task`` on its backend; OOM is retried once one memory mode lower by the manager.

        A result that came from the retry says so in its ``info["notices"]``.
        """
        spec = self.spec_for_task(task)
        if self.remote is not None:
            return self.remote.run(spec.name, task, request, progress)
        self.ensure_files(spec.name, progress)
        backend = self.backend(spec.name)
        mode = self.settings(spec.name).memory_mode

        def job() -> Any:
            result = backend.run(task, request, progress)
            return self._noted_retry(result)

        return self.manager.run(job, mode=mode, what=f"{spec.family} {task.replace('_', '-')}")

    def stream(self, task: str, request: Any, progress: ProgressFn) -> Iterator[Any]:
        """Run a streaming task (the backend's ``stream``), holding the device only while iterated.

        When the manager's OOM retry produced the stream, its first item says so in ``notices``.
        """
        spec = self.spec_for_task(task)
        if self.remote is not None:
            return self.remote.stream(spec.name, task, request, progress)
        self.ensure_files(spec.name, progress)
        backend = self.backend(spec.name)
        mode = self.settings(spec.name).memory_mode

        def job() -> Iterator[Any]:
            items = backend.stream(task, request, progress)
            try:
                first = True
                for item in items:
                    yield self._noted_retry(item) if first else item
                    first = False
            finally:
                items.close()  # Stop: end the backend's stream now, releasing what it holds

        return self.manager.stream(job, mode=mode, what=f"{spec.family} {task.replace('_', '-')}")

    def _noted_retry(self, result: Any) -> Any:
        """``result`` with a notice added when it came from the manager's OOM retry."""
        first = self.manager.retried_from()
        if first is None:
            return result
        return with_notice(result, retry_notice(first, self.manager.mode))

    def ensure_files(self, name: str, progress: ProgressFn | None = None) -> None:
        """Download what backend ``name`` lacks before it loads (checked locally, no network).

        The first generation that needs a model shows its download as progress; offline, a
        missing file fails here with the list of what is missing and the command that fetches it.
        """
        from backends.runtime import downloads

        plans = downloads.plan(self.preset, sections=[self.spec(name).settings_key])
        if plans and downloads.missing(plans, self.ctx):
            downloads.ensure(plans, self.ctx, progress, preset=self.preset_name or None)

    def _component_sizes(self, name: str) -> dict[str, int]:
        """Expected bytes of each component (``cascade.prior`` from the ``prior`` source's subfolder)."""
        spec = self.spec(name)
        settings = self.settings(name)
        per_param = DTYPE_BYTES[settings.dtype]
        sizes = {}
        for key in spec.components:
            value = getattr(settings, key)
            if value.repo.startswith(TINY_PREFIX):
                continue  # tiny models share subfolder names with the real ones, not their sizes
            params = spec.params_m.get(value.subfolder or value.repo, 0.0)
            if params:
                sizes[f"{name}.{key}"] = int(params * 1e6 * per_param)
        return sizes

    def size_estimate(self, name: str) -> int:
        """Bytes of the backend's weights in the preset's dtype, before anything is loaded."""
        return sum(self._component_sizes(name).values())


def _checked(specs: Sequence[BackendSpec]) -> dict[str, BackendSpec]:
    """The specs by name, refusing two families with one name or one task served twice.

    Raises:
        ValueError: a duplicate name or task (a programming error in the families list).
    """
    by_name: dict[str, BackendSpec] = {}
    owners: dict[str, str] = {}
    for spec in specs:
        if spec.name in by_name:
            raise ValueError(f"two family specs are named {spec.name!r}")
        by_name[spec.name] = spec
        for task in spec.tasks:
            if task in owners:
                raise ValueError(f"task {task!r} is served by both {owners[task]!r} and {spec.name!r}")
            owners[task] = spec.name
    return by_name


def retry_notice(first: MemoryMode, used: MemoryMode) -> str:
    """What the user reads when a job ran out of device memory and succeeded one mode lower."""
    return (f"Ran out of device memory in {first.value} memory mode; freed the device and ran again "
            f"in {used.value} mode, which is slower.")


def with_notice(result: Any, notice: str) -> Any:
    """Add ``notice`` to a backend result: ``info["notices"]`` (images, video, orbit) or a
    dataclass's ``notices`` tuple (chat chunks); other results are returned unchanged."""
    info = getattr(result, "info", None)
    if isinstance(info, dict):
        info["notices"] = [*info.get("notices", []), notice]
        return result
    if dataclasses.is_dataclass(result) and not isinstance(result, type) and hasattr(result, "notices"):
        return dataclasses.replace(result, notices=(notice, *result.notices))
    logger.info("%s (the result has no notices to carry this)", notice)
    return result
