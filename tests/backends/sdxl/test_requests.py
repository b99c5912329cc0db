"""SDXL's own request options and its step split, checked without any model."""

from __future__ import annotations

from typing import Any

import pytest

from backends.runtime.errors import InputError
from backends.sdxl.requests import parse_options
from backends.sdxl.spec import SPEC, SdxlDefaults, SdxlSettings
from backends.sdxl.steps import plan_steps
from backends.sdxl.tiny import SCHEDULER_CONFIG


@pytest.fixture(scope="module")
def scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(**SCHEDULER_CONFIG)


def test_options_default_to_the_preset() -> None:
    settings = SdxlSettings(defaults=SdxlDefaults(refiner=True, high_noise_frac=0.7))
    assert parse_options(None, settings).as_dict() == {"refiner": True, "high_noise_frac": 0.7}
    assert parse_options({"refiner": False}, settings).as_dict() == {"refiner": False, "high_noise_frac": 0.7}
    assert parse_options({"refiner": "TRUE", "high_noise_frac": "0.75"}, SdxlSettings()).as_dict() == {
        "refiner": True, "high_noise_frac": 0.75}


@pytest.mark.parametrize(("options", "field", "message"), [
    ({"refiner": "maybe"}, "refiner", "must be true or false, got 'maybe'"),
    ({"refiner": 1}, "refiner", "must be true or false, got 1"),
    ({"high_noise_frac": 1.0}, "high_noise_frac", "strictly between 0 and 1"),
    ({"high_noise_frac": 0}, "high_noise_frac", "strictly between 0 and 1"),
    ({"high_noise_frac": 1.5}, "high_noise_frac", "must be between 0 and 1, got 1.5"),
    ({"high_noise_frac": "lots"}, "high_noise_frac", "expected a number"),
    ({"max_sequence_length": 256}, "options", "unknown SDXL option 'max_sequence_length'; known: refiner, "),
])
def test_bad_options_name_their_field(options: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_options(options, SdxlSettings())
    assert caught.value.field == field and message in caught.value.detail


def test_the_spec_offers_its_one_model() -> None:
    assert SdxlSettings().offer == list(SPEC.models) == ["sdxl"]


def test_the_defaults_are_the_model_card_s() -> None:
    defaults = SdxlDefaults()
    assert (defaults.steps, defaults.guidance, defaults.width, defaults.height) == (30, 5.0, 1024, 1024)
    assert (defaults.refiner, defaults.high_noise_frac, defaults.strength) == (False, 0.8, 0.8)
    assert SdxlSettings().dtype == "float16" and SdxlSettings().unet.variant == "fp16"


def test_step_split_follows_the_pipelines(scheduler: Any) -> None:
    """40 steps at 0.8: the model card's ensemble runs 32 base and 8 refiner steps."""
    assert plan_steps(scheduler, 40, None, True, 0.8).__dict__ == {"base": 32, "refiner": 8}
    assert plan_steps(scheduler, 30, None, False, 0.8).__dict__ == {"base": 30, "refiner": 0}
    assert plan_steps(scheduler, 10, 0.5, False, 0.8).__dict__ == {"base": 5, "refiner": 0}
    # img2img at strength 0.5: 5 steps are left; those above the hand-over are the base's.
    assert plan_steps(scheduler, 10, 0.5, True, 0.8).__dict__ == {"base": 3, "refiner": 2}
    assert plan_steps(scheduler, 10, 0.05, True, 0.8).__dict__ == {"base": 0, "refiner": 0}  # nothing denoises
    assert scheduler.num_inference_steps is None  # the given scheduler's own state is not touched


@pytest.mark.parametrize(("steps", "strength", "frac", "message"), [
    (1, None, 0.8, "leaves the base model none of 1 steps"),
    (10, 0.1, 0.8, "leaves the base model none of the 1 steps that strength 0.1 leaves"),
    (10, None, 0.9999, "leaves the refiner none of 10 steps"),
])
def test_a_hand_over_that_starves_a_model_is_refused(scheduler: Any, steps: int, strength: float | None,
                                                      frac: float, message: str) -> None:
    with pytest.raises(InputError) as caught:
        plan_steps(scheduler, steps, strength, True, frac)
    assert caught.value.field == "high_noise_frac" and message in caught.value.detail
