"""Hugging Face Spaces: ZeroGPU by its current docs; no `spaces` import elsewhere.

On ZeroGPU every model of the preset is loaded and placed at start-up, with device memory planned
from the GPU size (no live reading), and every GPU handler is wrapped with ``spaces.GPU`` asking for
``zerogpu.SPACE_SIZE`` and a duration computed from the request. A fake ``spaces`` module records
the wrapping; the tiny preset stands in for the real models.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Callable

import pytest

import app
from backends.cascade.requests import TextToImageRequest
from backends.families import FAMILIES
from backends.runtime import probe as probe_module
from backends.runtime import zerogpu
from backends.runtime.probe import FixedDeviceProbe
from backends.runtime.studio import Studio, StudioConfig


class FakeSpaces(types.ModuleType):
    """Stands in for the `spaces` package: records what `spaces.GPU(duration=…, size=…)` wrapped."""

    def __init__(self) -> None:
        super().__init__("spaces")
        self.wrapped: dict[Callable[..., Any], tuple[Callable[..., int], str | None]] = {}

    def GPU(self, duration: Callable[..., int],  # noqa: N802 (the package's name)
            size: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.wrapped[fn] = (duration, size)
            return fn

        return wrap


class NoLiveReadings(types.ModuleType):
    """A ``pynvml`` whose every use fails the test: on ZeroGPU no live reading may be taken."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # module machinery (inspect walks sys.modules): a plain miss
            raise AttributeError(name)
        raise AssertionError(f"pynvml.{name} used on ZeroGPU, outside a GPU call")


def refuse(*_: Any, **__: Any) -> Any:
    raise AssertionError("a live memory reading was taken on ZeroGPU, outside a GPU call")


@pytest.fixture()
def zero_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeSpaces:
    """A ZeroGPU Space: the fake ``spaces`` installed, and every live memory reading refused."""
    import torch

    fake = FakeSpaces()
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setitem(sys.modules, "pynvml", NoLiveReadings("pynvml"))
    monkeypatch.setattr(probe_module.SystemProbe, "read", refuse)
    monkeypatch.setattr(torch.cuda, "mem_get_info", refuse)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    return fake


def tiny_args(models_dir: Path, tmp_path: Path) -> Any:
    return app.parse_args(["--preset", "tiny", "--models-dir", str(models_dir), "--outputs", str(tmp_path)],
                          environ={})


#: Each public GPU endpoint, with a small and a bigger request in its own argument order.
REQUESTS: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {
    "generate_image": (("a cat", "", 512, 512, 10, 5, 4.0, 0.0, 1, -1),
                       ("a cat", "", 1024, 1024, 20, 10, 4.0, 0.0, 4, -1)),
    "image_variation": ((None, "", "", 512, 512, 1, -1), (None, "", "", 1024, 1024, 4, -1)),
    "img2img": ((None, "", "", 0.6, 512, 512, -1), (None, "", "", 0.6, 1536, 1536, -1)),
    "generate_video": ((None, 14, 7, 127, 0.02, 10, 0, -1), (None, 25, 7, 127, 0.02, 30, 0, -1)),
    "orbit": ((None, "u", 10.0, 10, -1), (None, "u", 10.0, 50, -1)),
    "chat": (("hi", [], "", 0.7, 0.95, 64), ("hi", [], "", 0.7, 0.95, 2048)),
    "generate_image_sd": (("a cat", "", 512, 512, 10, 4.5, 1, -1, ""),
                          ("a cat", "", 1024, 1024, 40, 4.5, 2, -1, "")),
    "img2img_sd": ((None, "a cat", "", 0.8, 512, 512, -1, ""), (None, "a cat", "", 0.8, 1024, 1024, -1, "")),
    "generate_audio": (("rain", "", 10, 50, 7.0, -1), ("rain", "", 47, 200, 7.0, -1)),
}


def picture_requests(tmp_path: Path) -> dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """The endpoints whose size comes from the picture sent (inpaint; img2img_sd with 0 × 0)."""
    from PIL import Image

    files = []
    for side in (384, 1536):
        path = tmp_path / f"picture-{side}.png"
        Image.new("RGB", (side, side)).save(path)
        files.append({"path": str(path), "meta": {"_type": "gradio.FileData"}})
    return {"inpaint": tuple((picture, picture, "a cat", "", 0.8, -1, "") for picture in files),
            "img2img_sd": tuple((picture, "a cat", "", 0.8, 0, 0, -1, "") for picture in files)}


def test_zero_gpu_wraps_every_gpu_handler_with_the_space_size_and_a_request_sized_duration(
        zero_gpu: FakeSpaces, models_dir: Path, tmp_path: Path) -> None:
    from tabs import sd

    demo = app.build_ui(app.build_studio(tiny_args(models_dir, tmp_path)))
    gpu_events = [fn for fn in demo.fns.values() if fn.concurrency_id == "gpu"]
    unwrapped = sorted(fn.fn.__name__ for fn in gpu_events if fn.fn not in zero_gpu.wrapped)
    # Every event on the GPU queue, the tabs' own buttons too, but for two that run no model and
    # queue there only to wait their turn: /unload (never pulls a model from under a job) and the
    # chat's Clear. Wrapping them would spend the visitor's quota on a GPU they do not use.
    assert len(gpu_events) > len(unwrapped) and unwrapped == ["<lambda>", "unload"]
    assert {size for _, size in zero_gpu.wrapped.values()} == {zerogpu.SPACE_SIZE.value} == {"xlarge"}
    by_name = {fn.api_name: zero_gpu.wrapped[fn.fn][0] for fn in gpu_events if fn.fn in zero_gpu.wrapped}
    assert set(REQUESTS) | {"inpaint"} <= set(by_name)
    for name, (small, big) in [*REQUESTS.items(), *picture_requests(tmp_path).items()]:
        short, long = by_name[name](*small), by_name[name](*big)
        assert isinstance(short, int) and isinstance(long, int), name
        assert 0 < short < long <= 300, (name, short, long)  # grows with the request, under the cap
    # A picture that cannot be read (the handler refuses it at once) gets the 1024² estimate.
    assert by_name["inpaint"](None, None, "a cat", "", 0.8, -1, "") == sd.seconds(1024, 1024, 40)
    assert by_name["generate_image"]("a cat", "", "abc", 1024, 20, 10, 4, 0, 1, -1) == 60  # fails fast anyway


def test_zero_gpu_preloads_the_preset_at_start_up_without_live_memory_readings(
        zero_gpu: FakeSpaces, models_dir: Path, tmp_path: Path) -> None:
    studio = app.build_studio(tiny_args(models_dir, tmp_path))
    components = studio.manager.statuses()
    families = {status.name.split(".")[0] for status in components}
    assert set(studio.registry.specs) <= families  # every family of the preset, before any request
    assert [s.name for s in components if s.placement != "gpu"] == []
    loads = {s.name: studio.manager.component(s.name).loads for s in components}
    assert set(loads.values()) == {1}
    status = studio.status()  # /status reads the planned device, never the GPU
    assert (status["vram_total"], status["vram_free"] > 0) == (zerogpu.SPACE_SIZE.vram_bytes, True)
    app.build_ui(studio)
    job = TextToImageRequest.build("a red lighthouse", "", 256, 256, 2, 2, 4.0, 0.0, 1, 3)
    assert studio.registry.run("text_to_image", job, lambda *a: None).images
    assert {s.name: studio.manager.component(s.name).loads for s in studio.manager.statuses()} == loads


def test_preload_leaves_in_ram_what_does_not_fit_beside_the_headroom(models_dir: Path, tmp_path: Path) -> None:
    total = 10**9  # the tiny models come to a few MB: every one fits, but for the headroom
    config = StudioConfig(preset="tiny", models_dir=models_dir, outputs_dir=tmp_path,
                          cache_dir=app.cache_dir(models_dir), zero_gpu=True)
    studio = Studio(config, FAMILIES, probe=FixedDeviceProbe("planned", total))
    assert studio.manager.pin_host_copies is False  # no CUDA driver to pin with outside a GPU call
    assert studio.preload(headroom_bytes=total) == []  # nothing fits beside a card-sized headroom...
    statuses = studio.manager.statuses()
    assert {s.placement for s in statuses} == {"cpu"}  # ...yet every component was read into RAM
    cascade = [s.name for s in statuses if s.name.startswith("cascade.")]
    room = studio.manager.usable_free() - sum(studio.manager.component(name).size for name in cascade)
    assert studio.preload(headroom_bytes=room) == cascade  # exactly the first family fits now
    assert {s.name for s in studio.manager.statuses() if s.placement == "gpu"} == set(cascade)
    assert studio.manager.usable_free() == room
    assert {studio.manager.component(s.name).loads for s in studio.manager.statuses()} == {1}



def test_preload_keeps_what_runs_from_ram_in_ram(models_dir: Path, tmp_path: Path) -> None:
    """SD3.5's T5 with ``t5: cpu`` (the lite preset's) runs from its RAM copy: placing it would waste 9.5 GB."""
    config = StudioConfig(preset="tiny", models_dir=models_dir, outputs_dir=tmp_path,
                          cache_dir=app.cache_dir(models_dir), zero_gpu=True)
    studio = Studio(config, FAMILIES, probe=FixedDeviceProbe("planned", 10**10))
    studio.preset.settings.sd3.t5 = "cpu"
    placed = studio.preload(headroom_bytes=10**8)  # room for every tiny model
    placement = {s.name: s.placement for s in studio.manager.statuses()}
    assert placement["sd3.text_encoder_3"] == "cpu" and "sd3.text_encoder_3" not in placed
    assert {where for name, where in placement.items() if name != "sd3.text_encoder_3"} == {"gpu"}

def test_without_zero_gpu_spaces_is_never_imported(models_dir: Path, tmp_path: Path) -> None:
    """``spaces`` is installed (requirements.txt) but gradio's own attempt and ours must not load it."""
    code = ("import importlib.util, sys, app\n"
            "assert importlib.util.find_spec('spaces') is not None, 'spaces is not installed'\n"
            f"args = app.parse_args(['--preset', 'tiny', '--models-dir', {str(models_dir)!r}, "
            f"'--outputs', {str(tmp_path)!r}], environ={{}})\n"
            "studio = app.build_studio(args)\n"
            "app.build_ui(studio, args.tabs)\n"
            "print(type(studio.manager.probe).__name__, studio.manager.pin_host_copies, 'spaces' in sys.modules)")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "SPACES_ZERO_GPU": "false"}  # spaces reads "false" as off, and so do we
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(app.__file__).parent, env=env, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "SystemProbe True False"


def test_a_space_binds_all_interfaces_and_zero_gpu_picks_lite() -> None:
    args = app.parse_args([], environ={"SPACE_ID": "someone/cascade-studio", "SPACES_ZERO_GPU": "true"})
    assert (args.host, args.no_auth, args.preset) == ("0.0.0.0", True, "lite")
    assert app.resolve_auth(args) is None
    args = app.parse_args([], environ={"SPACE_ID": "someone/cascade-studio", "SPACES_ZERO_GPU": "false"})
    assert args.preset == "auto"  # a dedicated GPU: the preset follows its memory
    args = app.parse_args(["--auth", "me:pw"], environ={"SPACE_ID": "someone/cascade-studio"})
    assert app.resolve_auth(args) == [("me", "pw")]


def test_the_gpu_sizes_are_the_docs_and_the_lite_preset_fits_the_space_size() -> None:
    from backends.families import load_preset
    from backends.runtime.loading import LoadContext
    from backends.runtime.memory import MemoryManager
    from backends.runtime.registry import Registry

    assert {size.value: size.vram_bytes for size in zerogpu.GpuSize} == {"large": 48 * 10**9,
                                                                         "xlarge": 96 * 10**9}
    preset = load_preset(zerogpu.SPACE_PRESET)
    manager = MemoryManager(zerogpu.probe(), "cpu")
    registry = Registry(preset.settings, manager, LoadContext(cache_dir=Path("unused")), FAMILIES)
    # The registry's estimate before anything loads: it knows every family's weights but SD3.5's
    # transformer (hinted by its backend) and SV3D's (converted on first use), about 14 GB together.
    weights = sum(registry.size_estimate(name) for name in registry.specs) + 14 * 10**9
    assert weights + zerogpu.PRELOAD_HEADROOM_BYTES <= manager.usable_free()
    assert weights + zerogpu.PRELOAD_HEADROOM_BYTES > zerogpu.GpuSize.LARGE.vram_bytes  # so not large


def test_readme_is_a_space_card_matching_requirements() -> None:
    import yaml

    root = Path(app.__file__).parent
    card = yaml.safe_load((root / "README.md").read_text().split("---")[1])
    pins = {name.split("[")[0]: version  # gradio[mcp] pins gradio
            for name, version in (line.split("==") for line in (root / "requirements.txt").read_text().splitlines()
                                  if "==" in line and not line.startswith("#"))}
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py"
    assert card["sdk_version"] == pins["gradio"]
    assert "spaces" in pins  # the Space installs requirements.txt: spaces.GPU(size=...) needs 0.51
    assert card["suggested_hardware"] and card["license"]
    preload = " ".join(card["preload_from_hub"])
    assert "prior_lite/diffusion_pytorch_model.bf16.safetensors" in preload
    assert "decoder_lite/diffusion_pytorch_model.bf16.safetensors" in preload
