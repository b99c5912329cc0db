"""SD3.5's options, defaults and T5 placement rule, and its preset sections."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from backends.families import FAMILIES, load_preset
from backends.runtime.errors import InputError
from backends.sd3.requests import check_offered, model_defaults, parse_options, t5_placement
from backends.sd3.spec import MODELS, SPEC, Sd3Settings


def test_options_default_to_the_model_and_the_preset() -> None:
    settings = Sd3Settings()
    options = parse_options(None, settings, "sd3.5-medium")
    assert (options.max_sequence_length, options.t5) == (256, "device")
    assert parse_options({"max_sequence_length": "512", "t5": " off "}, settings, "sd3.5-large").as_dict() == \
        {"max_sequence_length": 512, "t5": "off"}
    assert parse_options({"max_sequence_length": None, "t5": ""}, settings, "sd3.5-large").t5 == "device"


@pytest.mark.parametrize("options, field, message", [
    ({"max_sequence_length": 76}, "max_sequence_length", "must be between 77 and 512, got 76"),
    ({"max_sequence_length": 513}, "max_sequence_length", "must be between 77 and 512, got 513"),
    ({"max_sequence_length": 100.5}, "max_sequence_length", "expected a whole number, got 100.5"),
    ({"max_sequence_length": "many"}, "max_sequence_length", "expected a number"),
    ({"t5": "gpu"}, "t5", "must be one of device, cpu, off, got 'gpu'"),
    ({"t5": 1}, "t5", "must be one of device, cpu, off, got 1"),
    ({"t5": "cpu"}, "t5", "this preset runs T5 on the device"),
    ({"refiner": True}, "options", "unknown SD3.5 option 'refiner'; known: max_sequence_length, t5"),
])
def test_bad_options_name_their_field(options: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_options(options, Sd3Settings(), "sd3.5-medium")
    assert caught.value.field == field and message in caught.value.detail


def test_t5_placement_follows_the_preset_and_memory_mode_gpu_overrides_cpu() -> None:
    def placed(t5: str, mode: str) -> str:
        return t5_placement(dataclasses.replace(Sd3Settings(), t5=t5, memory_mode=mode))

    assert [placed(t5, "auto") for t5 in ("device", "cpu", "off")] == ["device", "cpu", "off"]
    assert [placed(t5, "gpu") for t5 in ("device", "cpu", "off")] == ["device", "device", "off"]
    assert [placed("cpu", mode) for mode in ("offload", "sequential")] == ["cpu", "cpu"]
    off = dataclasses.replace(Sd3Settings(), t5="off")
    with pytest.raises(InputError, match="t5: this preset turns T5 off"):
        parse_options({"t5": "device"}, off, "sd3.5-medium")
    cpu = dataclasses.replace(Sd3Settings(), t5="cpu")
    assert parse_options({"t5": "cpu"}, cpu, "sd3.5-medium").t5 == "cpu"
    assert parse_options({"t5": "off"}, cpu, "sd3.5-medium").t5 == "off"


def test_the_model_cards_defaults() -> None:
    settings = Sd3Settings()
    assert [(model_defaults(settings, m).steps, model_defaults(settings, m).guidance) for m in MODELS] == \
        [(28, 3.5), (4, 0.0), (40, 4.5)]
    assert all(model_defaults(settings, m).width == model_defaults(settings, m).height == 1024 for m in MODELS)
    assert all(model_defaults(settings, m).strength == 0.8 for m in MODELS)
    assert settings.offer == ["sd3.5-medium"] and settings.dtype == "bfloat16" and settings.t5 == "device"
    with pytest.raises(InputError, match="model: must be one of sd3.5-large, sd3.5-large-turbo, sd3.5-medium"):
        model_defaults(settings, "sdxl")
    with pytest.raises(InputError, match="model: must be one of sd3.5-medium"):
        check_offered(settings, "sd3.5-large")


def test_the_spec_names_only_diffusers_folders_and_one_shared_repo() -> None:
    assert SPEC in FAMILIES and SPEC.models == MODELS
    assert SPEC.tasks == ("sd3_text_to_image", "sd3_img2img", "sd3_inpaint")
    settings = Sd3Settings()
    sources = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
               if f.name.startswith(("transformer", "vae", "text_encoder", "tokenizer", "scheduler"))}
    assert {s.subfolder for s in sources.values()} == {
        "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2",
        "tokenizer_3", "scheduler"}
    shared = {s.repo for name, s in sources.items() if not name.startswith("transformer")}
    assert shared == {"stabilityai/stable-diffusion-3.5-medium"}
    assert {s.repo for name, s in sources.items() if name.startswith("transformer")} == {
        "stabilityai/stable-diffusion-3.5-large", "stabilityai/stable-diffusion-3.5-large-turbo",
        "stabilityai/stable-diffusion-3.5-medium"}
    assert all(s.variant is None for s in sources.values())


def test_the_download_plan_takes_the_diffusers_folders_only() -> None:
    from backends.runtime.download_plan import plan

    preset = load_preset("lite").settings
    patterns = [p for repo_plan in plan(preset, sections=["sd3"]) for p in repo_plan.allow_patterns]
    assert patterns and all("/" in p for p in patterns)  # never a root file such as sd3.5_large.safetensors
    assert not any(p.startswith("text_encoders/") for p in patterns)


def test_the_tiny_preset_points_every_source_at_tiny_sd3() -> None:
    section = load_preset("tiny").settings.sd3  # type: ignore[attr-defined]
    sources = [getattr(section, f.name) for f in dataclasses.fields(section)
               if hasattr(getattr(section, f.name), "repo")]
    assert len(sources) == 11 and all(source.repo == "tiny:sd3" for source in sources)
    assert section.dtype == "float32"
    assert list(section.offer) == list(MODELS)  # every model value, Large first
    assert [(d.steps, d.width) for d in (section.defaults.large, section.defaults.large_turbo,
                                         section.defaults.medium)] == [(3, 256), (2, 256), (4, 256)]
    assert section.defaults.large_turbo.guidance == 0.0  # the model card's, kept


def test_unused_sources_are_the_models_not_offered_and_t5_when_off() -> None:
    assert Sd3Settings().unused_sources() == ("transformer_large", "transformer_large_turbo")
    off = dataclasses.replace(Sd3Settings(), offer=list(MODELS), t5="off")
    assert off.unused_sources() == ("text_encoder_3", "tokenizer_3")
    assert dataclasses.replace(off, t5="cpu").unused_sources() == ()
