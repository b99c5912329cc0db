"""A family the runtime has never heard of: declared, registered and run only inside this test.

It proves what docs/architecture.md promises: a family is a spec (settings with defaults, a
factory, a tiny builder) and a preset section, and the runtime serves it through the same path as
the shipped ones: preset validation, tiny build and ``from_pretrained``, the memory manager,
``/status`` and ``/unload``, the download plan. Its backend and builder live in this module and
are reached by the import strings in the spec, exactly as a family package's are.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from backends.runtime import downloads
from backends.runtime.errors import InputError, UnknownNameError
from backends.runtime.loading import LoadContext, Source, load_pretrained
from backends.runtime.memory import MemoryManager
from backends.runtime.presets import PresetError
from backends.runtime.probe import GB, FakeProbe
from backends.runtime.progress import ProgressFn
from backends.runtime.requests import parse_int, parse_seed
from backends.runtime.settings import choices, preset_schema
from backends.runtime.spec import BackendSpec
from backends.runtime.studio import Studio, StudioConfig
from backends.runtime.tiny import TinyFamily, seeded

logger = logging.getLogger(__name__)

WIDTH = 8
STEPS = "Doubling"


class Doubler(ModelMixin, ConfigMixin):
    """The fake family's one model: a linear layer, saved and loaded like any diffusers model."""

    @register_to_config
    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@dataclass
class DoublerDefaults:
    #: Passes through the model.
    passes: int = 2


@dataclass
class DoublerSettings:
    #: The model's folder.
    model: Source = field(default_factory=lambda: Source("example/doubler", "model"))
    dtype: str = "float32"
    memory_mode: str = "auto"
    #: A family-owned enumerated key: its choices live in its own metadata.
    flavour: str = field(default="plain", metadata=choices("plain", "fancy"))
    defaults: DoublerDefaults = field(default_factory=DoublerDefaults)


@dataclass(frozen=True)
class DoubleRequest:
    passes: int
    seed: int

    @classmethod
    def build(cls, passes: Any, seed: Any) -> "DoubleRequest":
        return cls(parse_int("passes", passes, 1, 10), parse_seed("seed", seed))


@dataclass
class DoubleResult:
    output: torch.Tensor
    info: dict[str, Any]


def build_tiny(root: Path) -> None:
    """The fake family's tiny builder: one seeded ``Doubler`` in ``model/``."""
    with seeded(42):
        Doubler().save_pretrained(root / "model")


class DoublerBackend:
    """Runs ``passes`` passes of the model over a seeded input, one progress step each."""

    name = "fake"
    tasks = ("double",)

    def __init__(self, settings: DoublerSettings, manager: MemoryManager, ctx: LoadContext) -> None:
        self.settings = settings
        self.manager = manager
        manager.register("fake.model", lambda: load_pretrained(Doubler, settings.model, ctx,
                                                               dtype=torch.float32).eval())

    def run(self, task: str, request: DoubleRequest, progress: ProgressFn) -> DoubleResult:
        started = time.perf_counter()
        x = torch.randn(1, WIDTH, generator=torch.Generator().manual_seed(request.seed))
        with self.manager.use("fake.model", 4 * WIDTH * 4) as model, torch.inference_mode():
            for step in range(request.passes):
                x = model(x.to(self.manager.device))
                progress(STEPS, step + 1, request.passes)
        return DoubleResult(x.cpu(), {"seed": request.seed, "seconds": time.perf_counter() - started})


FAKE = BackendSpec(
    name="fake",
    family="Fake doubler",
    tasks=("double",),
    factory=f"{__name__}:DoublerBackend",
    settings=DoublerSettings,
    license="test only",
    license_url="https://example.invalid/license",
    components=("model",),
    params_m={"model": 0.5},  # millions of parameters, for the estimate before loading
    tiny=TinyFamily(name="fake", builder=f"{__name__}:build_tiny", version="v1"),
)


def write_preset(folder: Path, body: str) -> Path:
    path = folder / "fake.yaml"
    path.write_text(body)
    return path


TINY_PRESET = 'description: "fake"\ndevice: cpu\nfake:\n  model: {repo: "tiny:fake", subfolder: model}\n'


def test_a_new_family_runs_through_the_registry(tmp_path: Path) -> None:
    preset = write_preset(tmp_path, TINY_PRESET)
    studio = Studio(StudioConfig(preset=str(preset), cache_dir=tmp_path / "cache", outputs_dir=tmp_path / "out",
                                 offline=True), (FAKE,), probe=FakeProbe(device_total=4 * GB))
    assert studio.registry.tasks() == ["double"]
    assert studio.status()["models"] == []  # nothing loads before the first request
    steps: list[tuple[str, int, int]] = []

    result = studio.registry.run("double", DoubleRequest.build(3, 11), lambda *a: steps.append(a))

    assert steps == [(STEPS, 1, 3), (STEPS, 2, 3), (STEPS, 3, 3)]
    assert result.info["seed"] == 11
    # The tiny model was built by the spec's builder and read back by from_pretrained.
    built = studio.ctx.tiny.path("fake", tmp_path / "cache")
    assert (built / "model" / "diffusion_pytorch_model.safetensors").is_file()
    with seeded(42):
        reference = Doubler().eval()
    x = torch.randn(1, WIDTH, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        for _ in range(3):
            x = reference(x)
    assert torch.equal(result.output, x)
    # The manager placed it and /status shows it under the family's name.
    (model,) = studio.status()["models"]
    assert model["name"] == "fake.model" and model["placement"] == "gpu" and model["bytes"] > 0
    assert studio.unload("fake")["models"][0]["placement"] == "disk"
    with pytest.raises(UnknownNameError, match="Unknown task 'chat'; known: double"):
        studio.registry.run("chat", DoubleRequest.build(1, 1), lambda *a: None)


def test_the_spec_settings_are_the_preset_schema(tmp_path: Path) -> None:
    schema = preset_schema((FAKE,))
    assert schema().fake.defaults.passes == 2 and schema.families == (FAKE,)
    for body, message in (
        (TINY_PRESET + "  colour: red\n", r"key 'fake.colour' is not a preset key; allowed here: defaults, dtype"),
        (TINY_PRESET + "  flavour: spicy\n", r"key 'fake.flavour' must be one of plain, fancy; got 'spicy'"),
        (TINY_PRESET + "  defaults: {passes: many}\n", r"key 'fake.defaults.passes' must be of type int"),
        (TINY_PRESET + "cascade: {}\n", r"key 'cascade' is not a preset key; allowed here: description, "
                                        r"device, fake, min_vram_gb"),
    ):
        with pytest.raises(PresetError, match=message):
            Studio(StudioConfig(preset=str(write_preset(tmp_path, body)), cache_dir=tmp_path, offline=True),
                   (FAKE,), probe=FakeProbe(device_total=GB))


def test_the_download_plan_reads_the_spec(tmp_path: Path) -> None:
    """A hub source of the new family gets its config and weights planned from the spec's components."""
    preset = write_preset(tmp_path, 'fake:\n  model: {repo: "example/doubler", subfolder: model}\n')
    studio = Studio(StudioConfig(preset=str(preset), cache_dir=tmp_path, models_dir=tmp_path / "hub", offline=True),
                    (FAKE,), probe=FakeProbe(device_total=GB))
    (plan,) = downloads.plan(studio.preset.settings)
    assert plan.repo == "example/doubler"
    assert "model/diffusion_pytorch_model.safetensors" in plan.allow_patterns
    assert "model/config.json" not in plan.allow_patterns and "model/*.json" in plan.allow_patterns
    assert studio.registry.size_estimate("fake") == 500_000 * 4  # float32
    assert [m.repo for m in downloads.missing([plan], studio.ctx)] == ["example/doubler"]


def test_duplicate_names_and_tasks_fail_loudly() -> None:
    from dataclasses import replace

    from backends.runtime.registry import Registry

    manager = MemoryManager(FakeProbe(device_total=GB))
    settings = preset_schema((FAKE,))()
    with pytest.raises(ValueError, match="two family specs are named 'fake'"):
        Registry(settings, manager, LoadContext(Path(".")), (FAKE, FAKE))
    with pytest.raises(ValueError, match="task 'double' is served by both 'fake' and 'other'"):
        Registry(settings, manager, LoadContext(Path(".")), (FAKE, replace(FAKE, name="other")))


def test_bad_requests_name_the_field() -> None:
    with pytest.raises(InputError, match="passes: must be between 1 and 10, got 11"):
        DoubleRequest.build(11, 1)
