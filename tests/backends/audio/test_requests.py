"""``/generate_audio``'s request: every bad field named with what is allowed, checked without any model."""

from __future__ import annotations

from typing import Any

import pytest

from backends.audio.requests import MAX_GUIDANCE, MAX_SECONDS, MAX_STEPS, AudioRequest
from backends.audio.spec import AudioDefaults, AudioSettings
from backends.runtime.errors import InputError
from backends.runtime.requests import MAX_PROMPT_CHARS, MAX_SEED


def build(**changes: Any) -> AudioRequest:
    values: dict[str, Any] = dict(prompt="128 BPM tech house drum loop", negative_prompt="Low quality.", seconds=10.0,
                                  steps=200, guidance=7.0, seed=3)
    values.update(changes)
    return AudioRequest.build(*values.values())


def test_a_good_request_keeps_its_values() -> None:
    request = build(seconds="47", steps="100", guidance=" 4.5 ", seed=str(MAX_SEED))
    assert (request.seconds, request.steps, request.guidance, request.seed) == (47.0, 100, 4.5, MAX_SEED)
    assert request.as_dict() == {"prompt": "128 BPM tech house drum loop", "negative_prompt": "Low quality.",
                                 "seconds": 47.0, "steps": 100, "guidance": 4.5, "seed": MAX_SEED,
                                 "truncated": [], "notices": []}
    assert build(seconds=0.001).seconds == 0.001 and build(seconds=1).seconds == 1.0
    assert build(guidance=0).guided is False and build(guidance=1.0).guided is False and build().guided is True
    assert build(negative_prompt=None).negative_prompt == ""  # no negative prompt


def test_the_limits_are_the_model_s() -> None:
    assert (MAX_SECONDS, MAX_STEPS, MAX_GUIDANCE) == (47.0, 500, 25.0)
    assert build(seconds=MAX_SECONDS, steps=MAX_STEPS, guidance=MAX_GUIDANCE).steps == MAX_STEPS


@pytest.mark.parametrize(("field", "value", "message"), [
    ("seconds", 0, "must be more than 0 and at most 47 seconds, got 0"),
    ("seconds", 0.0, "must be more than 0 and at most 47 seconds, got 0.0"),
    ("seconds", -1, "must be more than 0 and at most 47 seconds, got -1"),
    ("seconds", 47.5, "must be more than 0 and at most 47 seconds, got 47.5"),
    ("seconds", "1e400", "must be more than 0 and at most 47 seconds, got '1e400'"),
    ("seconds", 10**400, "must be more than 0 and at most 47 seconds, got 1"),
    ("seconds", float("nan"), "expected a finite number, got nan"),
    ("seconds", float("inf"), "expected a finite number, got inf"),
    ("seconds", "ten", "expected a number, got 'ten'"),
    ("seconds", None, "is required"),
    ("seconds", True, "expected a number, got True"),
    ("seconds", [10], "expected a number, got list"),
    ("steps", 0, "must be between 1 and 500, got 0"),
    ("steps", 501, "must be between 1 and 500, got 501"),
    ("steps", 20.5, "expected a whole number, got 20.5"),
    ("steps", "many", "expected a number, got 'many'"),
    ("steps", None, "is required"),
    ("guidance", float("nan"), "expected a finite number, got nan"),
    ("guidance", "inf", "expected a finite number, got 'inf'"),
    ("guidance", -0.5, "must be between 0 and 25, got -0.5"),
    ("guidance", 25.5, "must be between 0 and 25, got 25.5"),
    ("guidance", {"cfg": 7}, "expected a number, got dict"),
    ("seed", -2, f"must be between -1 and {MAX_SEED}, got -2"),
    ("seed", 2**32, f"must be between -1 and {MAX_SEED}, got {2**32}"),
    ("seed", 1.5, "expected a whole number, got 1.5"),
    ("seed", "lucky", "expected a number, got 'lucky'"),
    ("prompt", "", "is empty; describe the sound or music you want"),
    ("prompt", "   \n", "is empty"),
    ("prompt", None, "is empty"),
    ("prompt", 42, "expected text, got int"),
    ("prompt", "\ud800", r"is not valid Unicode text \(a lone surrogate, U\+D800"),
    ("negative_prompt", ["Low quality."], "expected text, got list"),
    ("negative_prompt", "bad \udfff", "is not valid Unicode text"),
])
def test_bad_fields_are_named_with_what_is_allowed(field: str, value: Any, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        build(**{field: value})
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_a_seed_of_minus_one_or_empty_picks_a_random_one() -> None:
    seeds = {build(seed=-1).seed for _ in range(8)} | {build(seed="").seed, build(seed=None).seed}
    assert all(0 <= seed <= MAX_SEED for seed in seeds) and len(seeds) > 1


def test_huge_prompts_are_cut_with_a_notice_as_the_image_families_do() -> None:
    request = build(prompt="x" * (MAX_PROMPT_CHARS + 10), negative_prompt="y" * (MAX_PROMPT_CHARS + 1))
    assert len(request.prompt) == len(request.negative_prompt) == MAX_PROMPT_CHARS
    assert request.truncated == ("prompt", "negative_prompt")
    assert build(prompt="x" * MAX_PROMPT_CHARS).truncated == ()


def test_the_defaults_are_the_model_card_s() -> None:
    defaults = AudioDefaults()
    assert (defaults.seconds, defaults.steps, defaults.guidance, defaults.negative_prompt) == (
        10.0, 200, 7.0, "Low quality.")
    build(seconds=defaults.seconds, steps=defaults.steps, guidance=defaults.guidance,
          negative_prompt=defaults.negative_prompt)  # the defaults are valid requests
    settings = AudioSettings()
    assert settings.dtype == "float16" and settings.memory_mode == "auto"
    assert {getattr(settings, key).repo for key in ("text_encoder", "tokenizer", "projection_model", "transformer",
                                                    "vae", "scheduler")} == {"stabilityai/stable-audio-open-1.0"}
