"""The shared input parsers: every bad number or text names its field and shows the value as sent."""

from __future__ import annotations

import json
from typing import Any

import pytest

from backends.cascade.requests import ImageVariationRequest, TextToImageRequest
from backends.runtime.errors import InputError
from backends.runtime.requests import (
    MAX_SEED,
    check_unicode,
    parse_float,
    parse_int,
    parse_seed,
    parse_text,
    shown,
)

GOOD = dict(prompt="a lighthouse", negative_prompt="", width=256, height=256, prior_steps=3, decoder_steps=2,
            prior_guidance=4.0, decoder_guidance=0.0, num_images=1, seed=7)
HUGE = json.loads("1" + "0" * 400)  # as JSON hands it over: a Python int no float can hold


def image_request(**overrides: Any) -> TextToImageRequest:
    return TextToImageRequest.build(**{**GOOD, **overrides})


@pytest.mark.parametrize("value", [HUGE, -HUGE, 10**5000, "1" + "0" * 400, "-1e400"],
                         ids=["10**400", "-10**400", "10**5000", "10**400 as text", "-1e400 as text"])
def test_numbers_too_large_for_a_float_are_out_of_range_not_an_overflow(value: Any) -> None:
    with pytest.raises(InputError, match=r"^height: must be between 256 and 2048, got "):
        parse_int("height", value, 256, 2048)
    with pytest.raises(InputError, match=r"^prior_guidance: must be between 0 and 20, got "):
        parse_float("prior_guidance", value, 0.0, 20.0)
    with pytest.raises(InputError, match=r"^seed: must be between -1 and 4294967295, got "):
        parse_seed("seed", value)


def test_every_numeric_field_of_a_request_names_itself_for_a_huge_int() -> None:
    for field in ("width", "height", "prior_steps", "decoder_steps", "prior_guidance", "decoder_guidance",
                  "num_images", "seed"):
        with pytest.raises(InputError, match=rf"^{field}: must be between .*, got 100000000000… "
                                             r"\(a 401-digit number\)$"):
            image_request(**{field: HUGE})


def test_a_huge_int_is_shown_by_its_first_digits_and_its_length() -> None:
    assert shown(HUGE) == "100000000000… (a 401-digit number)"
    assert shown(-(10**5000) - 7) == "-100000000000… (a 5,001-digit number)"  # past str()'s 4,300 digits
    assert shown(987_654_321_987_654_321_987) == "987654321987… (a 21-digit number)"
    assert shown(10**20 - 1) == "99999999999999999999"
    assert shown("x" * 1000) == repr("x" * 80) + "… (1,000 characters)"


@pytest.mark.parametrize(("call", "message"), [
    (lambda: parse_int("prior_steps", 90.0000001, 1, 50), "prior_steps: must be between 1 and 50, got 90.0000001"),
    (lambda: parse_int("prior_steps", 50.000000000001, 1, 50),
     "prior_steps: must be between 1 and 50, got 50.000000000001"),
    (lambda: parse_float("prior_guidance", 20.000000001, 0.0, 20.0),
     "prior_guidance: must be between 0 and 20, got 20.000000001"),
    (lambda: parse_float("strength", -1e-12, 0.0, 1.0), "strength: must be between 0 and 1, got -1e-12"),
    (lambda: parse_int("width", "5000", 256, 2048), "width: must be between 256 and 2048, got '5000'"),
    (lambda: parse_int("width", 100, 256, 2048), "width: must be between 256 and 2048, got 100"),
    (lambda: parse_int("seed", MAX_SEED + 1, -1, MAX_SEED), "seed: must be between -1 and 4294967295, got 4294967296"),
    (lambda: parse_int("decoder_steps", 2.5, 1, 50), "decoder_steps: expected a whole number, got 2.5"),
    (lambda: parse_float("temperature", -1, 0.0, 2.0), "temperature: must be between 0 and 2, got -1"),
])
def test_a_value_just_outside_its_range_is_shown_as_sent(call: Any, message: str) -> None:
    with pytest.raises(InputError) as caught:
        call()
    assert str(caught.value) == message


@pytest.mark.parametrize(("value", "message"), [
    ("abc", "expected a number, got 'abc'"), (True, "expected a number, got True"),
    ([3], "expected a number, got list"), (None, "is required"), ("nan", "expected a finite number, got 'nan'"),
    ("inf", "expected a finite number, got 'inf'"), (float("-inf"), "expected a finite number, got -inf"),
    ("\ud800", r"expected a number, got '\\ud800'"),
])
def test_other_bad_numbers_keep_their_messages(value: Any, message: str) -> None:
    with pytest.raises(InputError, match=f"^steps: {message}$"):
        parse_int("steps", value, 1, 100)


def test_values_in_range_are_kept_exactly() -> None:
    assert parse_int("steps", 50.0, 1, 50) == 50 and parse_int("steps", " 7 ", 1, 50) == 7
    assert parse_float("guidance", "0.25", 0.0, 1.0) == 0.25
    assert parse_seed("seed", MAX_SEED) == MAX_SEED and 0 <= parse_seed("seed", -1) <= MAX_SEED


@pytest.mark.parametrize(("text", "position"), [("\ud800", 0), ("a lighthouse \udfff", 13), ("ok \udc80 no", 3)])
def test_lone_surrogates_are_refused_naming_the_field(text: str, position: int) -> None:
    pattern = (r"^prompt: is not valid Unicode text \(a lone surrogate, U\+D[8-F][0-9A-F]{2}, "
               rf"at position {position}\)")
    with pytest.raises(InputError, match=pattern):
        parse_text("prompt", text)
    with pytest.raises(InputError, match=pattern.replace("prompt", "negative_prompt")):
        image_request(negative_prompt=text)
    with pytest.raises(InputError, match=pattern):
        image_request(prompt=text)


def test_lone_surrogates_are_refused_in_the_image_requests_too(tmp_path: Any) -> None:
    from PIL import Image

    photo = Image.new("RGB", (64, 64))
    for field in ("prompt", "negative_prompt"):
        values = {"prompt": "", "negative_prompt": "", field: "x\ud800"}
        with pytest.raises(InputError, match=rf"^{field}: is not valid Unicode text .*at position 1\)"):
            ImageVariationRequest.build(photo, values["prompt"], values["negative_prompt"], 0, 0, 1, 1)
    with pytest.raises(InputError, match=r"^image: is not valid Unicode text"):
        ImageVariationRequest.build(str(tmp_path / "\ud800.png"), "", "", 0, 0, 1, 1)


def test_valid_unicode_passes_untouched() -> None:
    for text in ("", "plain", "café ☕ 𝄞 🦜", "\U0010ffff"):  # astral characters are one code point
        assert check_unicode("prompt", text) == text
        assert parse_text("prompt", text) == (text, False)
    assert parse_text("prompt", "x" * 5000, 4000) == ("x" * 4000, True)


def test_the_orbit_requests_text_fields_refuse_lone_surrogates() -> None:
    from PIL import Image

    from backends.sv3d.requests import OrbitRequest

    cutout = Image.new("RGBA", (64, 64), (200, 0, 0, 255))
    with pytest.raises(InputError, match=r"^variant: is not valid Unicode text .*at position 1\)"):
        OrbitRequest.build(cutout, "p\ud800", 10, 1, 1, size=64, num_frames=4)
    with pytest.raises(InputError, match=r"^path: is not valid Unicode text .*at position 0\)"):
        OrbitRequest.build(cutout, "p", 10, 1, 1, "\ud800sine", size=64, num_frames=4)
    with pytest.raises(InputError, match=r"^elevation_deg: must be between -90 and 90, got 100000000000…"):
        OrbitRequest.build(cutout, "p", 10**400, 1, 1, size=64, num_frames=4)
    with pytest.raises(InputError, match=r"^elevation_end_deg: must be between -90 and 90, got 90\.0000001$"):
        OrbitRequest.build(cutout, "p", 10, 1, 1, "sine", 90.0000001, size=64, num_frames=4)
    assert OrbitRequest.build(cutout, "p", 10, 1, 1, "sine", 30, size=64, num_frames=4).path == "sine"
