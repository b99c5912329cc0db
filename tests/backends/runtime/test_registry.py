"""The registry and Studio on the tiny preset: lazy backends, placement under a budget, OOM retry."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.cascade.requests import TextToImageRequest
from backends.families import FAMILIES, load_context, load_preset
from backends.runtime.errors import OutOfMemory, UnknownNameError
from backends.runtime.studio import Studio, StudioConfig


def request(seed: int = 7) -> TextToImageRequest:
    return TextToImageRequest.build("a red lighthouse on a cliff", "", 256, 256, 3, 2, 4.0, 0.0, 1, seed)


def studio(tiny_cache: Path, tmp_path: Path, budget: int | None = None) -> Studio:
    return Studio(StudioConfig(preset="tiny", vram_budget_bytes=budget, cache_dir=tiny_cache,
                               outputs_dir=tmp_path / "outputs"), FAMILIES)


def test_backends_are_built_lazily_and_unknown_names_list_the_known(tiny_cache: Path, tmp_path: Path) -> None:
    st = studio(tiny_cache, tmp_path)
    assert st.registry.tasks() == ["text_to_image", "image_variation", "img2img", "sd3_text_to_image", "sd3_img2img",
                                   "sd3_inpaint", "image_to_video", "orbit", "chat", "sdxl_text_to_image",
                                   "sdxl_img2img", "sdxl_inpaint", "text_to_audio"]
    assert st.status()["models"] == []
    with pytest.raises(UnknownNameError, match="Unknown task 'paint'; known: text_to_image, image_variation, "
                                               "img2img, sd3_text_to_image, sd3_img2img, sd3_inpaint, "
                                               "image_to_video, orbit, chat, sdxl_text_to_image"):
        st.registry.run("paint", request(), lambda *a: None)
    with pytest.raises(UnknownNameError, match="Unknown backend 'speech'; known: cascade, sd3, svd, sv3d, stablelm, "
                                               "sdxl, audio$"):
        st.registry.backend("speech")
    st.unload("cascade")  # a known backend with nothing loaded is not an error
    st.unload("sdxl")
    with pytest.raises(UnknownNameError, match="known: all, cascade"):
        st.unload("speech")


def test_size_estimates_follow_the_preset() -> None:
    from backends.runtime.memory import MemoryManager
    from backends.runtime.probe import FakeProbe
    from backends.runtime.registry import Registry

    def estimate(name: str) -> float:
        registry = Registry(load_preset(name).settings, MemoryManager(FakeProbe(1)), load_context(Path(".")), FAMILIES)
        return registry.size_estimate("cascade") / 1e9

    image_side = 304.0 + 20.2  # CLIP image encoder and EfficientNet encoder (variation, img2img)
    assert estimate("lite") == pytest.approx(2 * (1030.8 + 699.5 + 632.1 + 18.4 + image_side) / 1e3, rel=1e-6)
    assert estimate("bf16") == pytest.approx(2 * (3589.1 + 1562.9 + 632.1 + 18.4 + image_side) / 1e3, rel=1e-6)
    assert estimate("full") == pytest.approx(2 * estimate("bf16"))


def test_tight_budget_evicts_the_prior_while_the_decoder_runs(tiny_cache: Path, tmp_path: Path,
                                                              tight_budget_bytes: int) -> None:
    st = studio(tiny_cache, tmp_path, budget=tight_budget_bytes)
    during_stage_b: list[dict[str, str]] = []

    def progress(stage: str, step: int, total: int) -> None:
        if stage.startswith("Stage B"):
            during_stage_b.append({s.name: s.placement for s in st.manager.statuses()})

    first = st.registry.run("text_to_image", request(), progress)
    assert during_stage_b and all(p["cascade.decoder"] == "gpu" for p in during_stage_b)
    assert all(p["cascade.prior"] == "cpu" for p in during_stage_b)
    resident = sum(s.bytes for s in st.manager.statuses() if s.placement == "gpu")
    assert resident <= tight_budget_bytes

    second = st.registry.run("text_to_image", request(), lambda *a: None)
    assert all(st.manager.component(n).loads == 1 for n in ("cascade.prior", "cascade.decoder"))
    assert second.images[0].tobytes() == first.images[0].tobytes()


def test_oom_in_the_decoder_is_retried_once_then_reported(tiny_cache: Path, tmp_path: Path) -> None:
    st = studio(tiny_cache, tmp_path)
    reference = st.registry.run("text_to_image", request(), lambda *a: None)

    st.manager.faults.arm("cascade.decoder", times=1)
    retried = st.registry.run("text_to_image", request(), lambda *a: None)
    assert retried.images[0].tobytes() == reference.images[0].tobytes()
    # The retry ran in offload mode: every component went back to RAM after its stage.
    assert {s.placement for s in st.manager.statuses()} == {"cpu"}

    st.manager.faults.arm("cascade.decoder", times=2)
    with pytest.raises(OutOfMemory, match="Stable Cascade text-to-image .*tried auto then offload"):
        st.registry.run("text_to_image", request(), lambda *a: None)
    assert {s.placement for s in st.manager.statuses()} <= {"cpu", "disk"}
    again = st.registry.run("text_to_image", request(), lambda *a: None)  # still serving
    assert again.images[0].tobytes() == reference.images[0].tobytes()


def test_stop_ends_the_job_at_the_next_step_and_frees_the_components(tiny_cache: Path, tmp_path: Path) -> None:
    from backends.runtime.errors import Cancelled

    st = studio(tiny_cache, tmp_path)
    control = st.start_job("session-1")
    steps: list[tuple[str, int]] = []

    def progress(stage: str, step: int, total: int) -> None:
        steps.append((stage, step))
        st.stop_job("session-1")  # the user presses Stop during the first step

    with pytest.raises(Cancelled, match="Stopped by the user"):
        st.registry.run("text_to_image", request(), control.wrap(progress))
    st.finish_job("session-1", control)
    assert len(steps) == 1
    assert all(st.manager.component(n).in_use == 0 for n in ("cascade.prior", "cascade.text_encoder"))
    assert not st.stop_job("session-1")  # nothing running any more
    assert st.registry.run("text_to_image", request(), lambda *a: None).images


def test_missing_files_offline_give_a_message_naming_the_repo(tmp_path: Path) -> None:
    from backends.runtime.errors import ModelUnavailable

    st = Studio(StudioConfig(preset="lite", cache_dir=tmp_path / "cache", models_dir=tmp_path / "hub",
                             outputs_dir=tmp_path / "outputs", offline=True), FAMILIES)
    with pytest.raises(ModelUnavailable, match=r"(?s)missing and the app is offline.*stabilityai/"
                       r"stable-cascade-prior.*prior_lite.*python app.py --download-only --preset lite"):
        st.registry.run("text_to_image", request(), lambda *a: None)
    assert {s.placement for s in st.manager.statuses()} <= {"disk"}  # nothing was loaded


def test_status_shows_expected_sizes_before_loading(tmp_path: Path) -> None:
    st = Studio(StudioConfig(preset="lite", cache_dir=tmp_path / "cache", outputs_dir=tmp_path / "o",
                             offline=True), FAMILIES)
    st.registry.backend("cascade")
    models = {m["name"]: m for m in st.status()["models"]}
    assert {m["placement"] for m in models.values()} == {"disk"}
    assert models["cascade.prior"]["bytes"] == int(1030.8e6 * 2)
    assert models["cascade.decoder"]["bytes"] == int(699.5e6 * 2)


def test_tiny_components_get_no_real_size_hints(tiny_cache: Path, tmp_path: Path) -> None:
    st = studio(tiny_cache, tmp_path)
    st.registry.backend("cascade")
    assert st.registry.size_estimate("cascade") == 0
    assert all(m["bytes"] == 0 for m in st.status()["models"])
