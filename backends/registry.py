"""The backend registry: backend specs as data, name -> lazily imported backend, one ``run``.

Tabs only ever call ``Registry.run(task, request, progress)``. The registry finds the backend
that serves the task, constructs it on first use (importing its module then, so start-up costs
nothing), and runs it under the memory manager, which owns placement and the OOM retry.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from backends.errors import UnknownNameError
from backends.loading import TINY_PREFIX, LoadContext
from backends.memory import MemoryManager, MemoryMode
from backends.progress import ProgressFn
from backends.settings import PresetSettings

logger = logging.getLogger(__name__)


class Backend(Protocol):
    """What every model-family module provides (see ``backends/cascade.py``)."""

    name: str
    tasks: tuple[str, ...]

    def run(self, task: str, request: Any, progress: ProgressFn) -> Any: ...


@dataclass(frozen=True)
class BackendSpec:
    """One model family, declared as data; the weights' sources come from the preset section."""

    #: Registry name, also the prefix of its component names in ``/status`` (``cascade.prior``).
    name: str
    #: Human name for the UI and messages.
    family: str
    #: Tasks it serves; each task belongs to exactly one backend.
    tasks: tuple[str, ...]
    #: ``module:Class`` imported on first use, constructed as ``Class(settings, manager, ctx)``.
    factory: str
    #: Attribute of ``PresetSettings`` holding this backend's settings.
    settings_key: str
    #: License of the released weights, shown in the UI and the README.
    license: str
    license_url: str
    #: Settings keys whose sources are model components (``cascade.prior`` in ``/status``).
    components: tuple[str, ...] = ()
    #: Parameter counts (millions) by the source's subfolder, or its repo for root-level models,
    #: for size estimates before anything loads (from the real configs, see NOTES.md).
    params_m: dict[str, float] = field(default_factory=dict)


BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec(
        name="cascade",
        family="Stable Cascade",
        tasks=("text_to_image", "image_variation", "img2img"),
        factory="backends.cascade:CascadeBackend",
        settings_key="cascade",
        license="stable-cascade-nc-community (non-commercial)",
        license_url="https://huggingface.co/stabilityai/stable-cascade/blob/main/LICENSE",
        # The previewer (3.98M, shared/data/cascade_previewer_keys.json) is left out: it sits at
        # the same repo root as the EfficientNet encoder, and params_m is keyed by folder.
        components=("text_encoder", "prior", "decoder", "vqgan", "image_encoder", "effnet"),
        # image_encoder: CLIP ViT-L/14 vision + 768 projection; the repo root holds the
        # EfficientNet encoder (20.2M, shared/data/cascade_effnet_encoder_keys.json).
        params_m={"prior": 3589.1, "prior_lite": 1030.8, "decoder": 1562.9, "decoder_lite": 699.5,
                  "text_encoder": 632.1, "vqgan": 18.4, "image_encoder": 304.0,
                  "stabilityai/stable-cascade": 20.2},
    ),
    BackendSpec(
        name="svd",
        family="Stable Video Diffusion",
        tasks=("image_to_video",),
        factory="backends.svd:SvdBackend",
        settings_key="svd",
        license="stable-video-diffusion-community (gated; accept it on the model page)",
        license_url="https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt/blob/main/LICENSE.md",
        components=("unet", "vae", "image_encoder"),
        params_m={"unet": 1524.6, "vae": 97.7, "image_encoder": 632.1},
    ),
    BackendSpec(
        name="sv3d",
        family="SV3D",
        tasks=("orbit",),
        factory="backends.sv3d:Sv3dBackend",
        settings_key="sv3d",
        license="sv3d-nc-community (gated; accept it on the model page)",
        license_url="https://huggingface.co/stabilityai/sv3d/blob/main/LICENSE.md",
        # Each single sgm file holds all three components (unet, vae, image_encoder), converted
        # on first use; the manager names them sv3d.<u|p>.<part>. No size hints: a hint is keyed
        # by settings key, and these files are not one component each.
        components=("checkpoint_u", "checkpoint_p"),
    ),
    BackendSpec(
        name="stablelm",
        family="StableLM",
        tasks=("chat",),
        factory="backends.stablelm:StableLMBackend",
        settings_key="stablelm",
        license="see the model card (StableLM Zephyr: non-commercial research; Tuned Alpha: CC BY-NC-SA 4.0)",
        license_url="https://huggingface.co/stabilityai/stablelm-2-zephyr-1_6b",
        components=("model",),
        params_m={"stabilityai/stablelm-2-zephyr-1_6b": 1644.4, "stabilityai/stablelm-zephyr-3b": 2795.4,
                  "stabilityai/stablelm-tuned-alpha-3b": 3638.5, "stabilityai/stablelm-tuned-alpha-7b": 7869.0},
    ),
)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class Registry:
    """Maps task and backend names to lazily built backends and runs them under the manager."""

    def __init__(self, preset: PresetSettings, manager: MemoryManager, ctx: LoadContext,
                 specs: tuple[BackendSpec, ...] = BACKENDS, preset_name: str = "") -> None:
        self.preset = preset
        self.preset_name = preset_name
        self.manager = manager
        self.ctx = ctx
        self.specs = {spec.name: spec for spec in specs}
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()

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
        from backends import downloads

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
