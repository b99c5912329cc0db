"""The bad-input matrix (issue #9, part 2): every API endpoint against many bad inputs, on one app.

Each case ends one of two ways, decided per case:

- **refused**: gradio_client gets an ``AppError`` whose message starts with the field's on-screen
  label and then its name as DESIGN.md's API table gives it ("Chat history (history[0]): …",
  "Component (name): …" for ``/unload``), not gradio's hidden-error text;
- **handled**: the app accepts the input, converts or fits it, says so in the info where it has
  one, and returns a correct result (right sizes, the seed asked for; pixel-identical to an
  equivalent clean input where the test can build one).

NaN, infinities and lone surrogates (``"\\ud800"``, which JSON allows) cannot go through
gradio_client (its JSON encoder refuses them, and UTF-8 has no lone surrogate), so those cases go
over the raw HTTP API with the JSON text written out. Integers too large for a float (401
digits) and deeply nested chat content go through gradio_client as they are. Before the matrix
the test keeps one fixed-seed result of each endpoint; after it, ``/status`` must answer and every
endpoint must give the same pixels, frames and text again. Each case is counted in
``reliability.json`` (``bad_inputs``: tried, answered = refused with a clear message, handled).

An upload over the app's 25 MB limit never reaches an endpoint: gradio_client refuses it before
sending (``tests/test_security.py`` covers the limit).
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import imageio_ffmpeg
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from backends.runtime.studio import Studio
from tabs.common import FIELD_LABELS
from tests.serving import serve_tiny

#: What API clients see when a handler fails with anything but ``gr.Error`` (gradio 6.31).
HIDDEN = "has not enabled verbose error reporting"
SYSTEM = "You are a helpful assistant."
MB = 2**20


def named(field: str) -> str:
    """How a refusal must start: the field's on-screen label, then its API name (issue #14)."""
    label = FIELD_LABELS.get(field.split("[", 1)[0])
    return rf"{re.escape(label)} \({re.escape(field)}\):" if label else rf"{re.escape(field)}[:\s]"


@dataclass(frozen=True)
class Pic:
    """A picture from the ``pictures`` fixture, uploaded with ``handle_file`` when sent."""

    name: str


#: Each endpoint's inputs in DESIGN.md's order, with small, fast, valid values.
DEFAULTS: dict[str, dict[str, Any]] = {
    "/generate_image": dict(prompt="a red lighthouse on a cliff", negative_prompt="", width=256, height=256,
                            prior_steps=3, decoder_steps=2, prior_guidance=4.0, decoder_guidance=0.0, num_images=1,
                            seed=7),
    "/image_variation": dict(image=Pic("photo.png"), prompt="", negative_prompt="", width=256, height=256,
                             num_images=1, seed=5),
    "/img2img": dict(image=Pic("photo.png"), prompt="a red house", negative_prompt="", strength=0.5, width=256,
                     height=256, seed=5),
    "/generate_video": dict(image=Pic("photo.png"), num_frames=2, fps=8, motion_bucket_id=127,
                            noise_aug_strength=0.02, steps=1, decode_chunk_size=0, seed=11),
    "/orbit": dict(image=Pic("cutout.png"), variant="p", elevation_deg=10, steps=1, seed=4, path="sine",
                   elevation_end_deg=30),
    "/chat": dict(message="hi", history=[], system_prompt=SYSTEM, temperature=0, top_p=1.0, max_new_tokens=8),
    "/unload": dict(name="all"),
    "/generate_image_sd": dict(prompt="a red lighthouse", negative_prompt="", width=256, height=256, steps=2,
                               guidance=3.0, num_images=1, seed=7, model="sdxl"),
    "/img2img_sd": dict(image=Pic("photo.png"), prompt="a red house", negative_prompt="", strength=0.5, width=256,
                        height=256, seed=5, model="sd3.5-medium"),
    "/inpaint": dict(image=Pic("photo.png"), mask=Pic("mask.png"), prompt="a door", negative_prompt="", strength=1.0,
                     seed=5, model="sdxl"),
    "/generate_audio": dict(prompt="rain on a tin roof", negative_prompt="Low quality.", seconds=1.0, steps=2,
                            guidance=7.0, seed=5),
}


#: Inputs an endpoint takes over the raw HTTP API beyond the contract's (none: /chat's extras are state).
RAW_EXTRAS: dict[str, list[Any]] = {}


@dataclass(frozen=True)
class Case:
    """One bad input: the contract inputs it replaces and how the app must answer."""

    endpoint: str
    label: str
    overrides: dict[str, Any]
    #: The field a refusal must name; None for a handled case.
    field: str | None = None
    #: Regex the refusal (or, for a handled case, one of the info's notices) must match.
    expect: str | None = None
    #: Sent over the raw HTTP API (NaN, Infinity).
    raw: bool = False
    #: Handled: these overrides give a clean input whose result must be identical.
    same_as: dict[str, Any] | None = None


def refused(endpoint: str, label: str, name: str, value: Any, expect: str | None = None, *,
            field: str | None = None, raw: bool = False) -> Case:
    return Case(endpoint, label, {name: value}, field or name, expect, raw)


def handled(endpoint: str, label: str, overrides: dict[str, Any], notice: str | None = None,
            same_as: dict[str, Any] | None = None) -> Case:
    return Case(endpoint, label, overrides, None, notice, same_as=same_as)


G, V, I, VID, O, C, U = ("/generate_image", "/image_variation", "/img2img", "/generate_video", "/orbit", "/chat",
                         "/unload")
SD, S2, INP = "/generate_image_sd", "/img2img_sd", "/inpaint"
AUD = "/generate_audio"
HUGE_HISTORY = [{"role": role, "content": f"turn {i} " + "word " * 40}
                for i in range(5_000) for role in ("user", "assistant")]  # about 2 MB
#: What JSON's 401-digit ``1000…0`` becomes in Python: an int that no float can hold.
TOO_BIG = 10**400
#: How a refusal shows it: its first digits and its length.
SHOWN_TOO_BIG = r"got 100000000000… \(a 401-digit number\)"


def lone_surrogate(position: int) -> str:
    """The refusal of text with a lone surrogate (``U+D800``) at ``position``."""
    return rf"is not valid Unicode text \(a lone surrogate, U\+D800, at position {position}\)"


def nested(depth: int, inner: Any) -> Any:
    """``inner`` inside ``depth`` lists. JSON parsers on both ends stop near 1,000 levels (Python's
    recursion limit), so the thousands-deep cases are in ``tests/backends/stablelm/test_requests.py``."""
    for _ in range(depth):
        inner = [inner]
    return inner


CASES = [
    # /generate_image
    refused(G, "text for a number", "width", "abc", "expected a number, got 'abc'"),
    refused(G, "a list for a number", "height", [256], "expected a number, got list"),
    refused(G, "a bool for a number", "num_images", True, "expected a number, got True"),
    refused(G, "10**9 steps", "prior_steps", 10**9, "between 1 and 100"),
    refused(G, "zero steps", "decoder_steps", 0, "between 1 and 50"),
    refused(G, "fractional steps", "decoder_steps", 2.5, "expected a whole number"),
    refused(G, "negative guidance", "prior_guidance", -1, "between 0 and 20"),
    refused(G, "NaN as text", "decoder_guidance", "nan", "finite"),
    refused(G, "infinity as text", "seed", "inf", "finite"),
    refused(G, "not a multiple of 128", "width", 300, "multiple of 128"),
    refused(G, "empty prompt", "prompt", "", "is empty"),
    refused(G, "missing prompt", "prompt", None, "is empty"),
    refused(G, "a prompt of spaces", "prompt", "  \n ", "is empty"),
    refused(G, "a list for the prompt", "prompt", ["a lighthouse"], "expected text, got list"),
    refused(G, "a dict for the negative prompt", "negative_prompt", {"text": "blurry"}, "expected text, got dict"),
    refused(G, "raw NaN", "prior_steps", float("nan"), "finite", raw=True),
    refused(G, "raw -Infinity", "width", float("-inf"), "finite", raw=True),
    refused(G, "a 401-digit width", "width", TOO_BIG, f"between 256 and 2048, {SHOWN_TOO_BIG}$"),
    refused(G, "a 401-digit guidance", "prior_guidance", -TOO_BIG, r"between 0 and 20, got -100000000000…"),
    refused(G, "a 401-digit seed", "seed", TOO_BIG, f"between -1 and 4294967295, {SHOWN_TOO_BIG}$"),
    refused(G, "401 digits as text", "decoder_steps", "1" + "0" * 400, r"between 1 and 50, got '1000"),
    refused(G, "steps just above the range", "prior_steps", 100.0000001, r"between 1 and 100, got 100\.0000001$"),
    refused(G, "guidance just above the range", "decoder_guidance", 20.000000001,
            r"between 0 and 20, got 20\.000000001$"),
    refused(G, "a lone surrogate in the prompt", "prompt", "a \ud800 lighthouse", lone_surrogate(2), raw=True),
    refused(G, "a lone surrogate in the negative prompt", "negative_prompt", "\ud800", lone_surrogate(0), raw=True),
    handled(G, "a 1 MB prompt", {"prompt": "lighthouse " * (MB // 11)}, r"prompt.*truncated"),
    # /image_variation
    refused(V, "no image", "image", None, "no image given"),
    refused(V, "a path as text, not an upload", "image", "photo.png", "expected an uploaded file, got the text"),
    refused(V, "a number for the image", "image", 5, "expected an uploaded file, got int"),
    refused(V, "a dict that is no file", "image", {"url": "http://example.invalid/x.png"},
            "expected an uploaded file, got an object with keys url"),
    refused(V, "PNG header then garbage", "image", Pic("garbage.png"), r"could not read garbage\.png"),
    refused(V, "a text file named .png", "image", Pic("text.png"), r"could not read text\.png"),
    refused(V, "a text file", "image", Pic("notes.txt"), r"could not read notes\.txt"),
    refused(V, "a 12000×12000 decompression bomb", "image", Pic("bomb.png"), "more than the 134,217,728 pixels"),
    refused(V, "a 1×1 picture", "image", Pic("dot.png"), "at least 32"),
    refused(V, "too many images", "num_images", 9, "between 1 and 4"),
    refused(V, "a 10**9 width", "width", 10**9, "between 256 and 2048"),
    refused(V, "a fractional seed", "seed", 1.5, "whole number"),
    refused(V, "a 401-digit height", "height", TOO_BIG, f"between 256 and 2048, {SHOWN_TOO_BIG}$"),
    refused(V, "a 401-digit image count", "num_images", TOO_BIG, f"between 1 and 4, {SHOWN_TOO_BIG}$"),
    refused(V, "a negative 401-digit seed", "seed", -TOO_BIG, r"between -1 and 4294967295, got -100000000000…"),
    refused(V, "a lone surrogate in the prompt", "prompt", "\ud800", lone_surrogate(0), raw=True),
    refused(V, "a lone surrogate in the negative prompt", "negative_prompt", "ok\ud800", lone_surrogate(2),
            raw=True),
    handled(V, "CMYK JPEG", {"image": Pic("cmyk.jpg")}, "CMYK input converted to RGB"),
    handled(V, "a 10000×10000 picture", {"image": Pic("huge.png")},
            "input downscaled from 10000×10000 to 2048×2048"),
    handled(V, "palette with a transparent colour", {"image": Pic("palette.png")}, "P input: transparent areas",
            same_as={"image": Pic("palette-on-white.png")}),
    handled(V, "an EXIF-rotated photo", {"image": Pic("turned.png")},
            "input rotated 90° clockwise from its EXIF orientation", same_as={"image": Pic("upright.png")}),
    # /img2img
    refused(I, "text for a number", "strength", "half", "expected a number, got 'half'"),
    refused(I, "above 1", "strength", 1.5, "between 0 and 1"),
    refused(I, "below 0", "strength", -0.1, "between 0 and 1"),
    refused(I, "a list", "strength", [0.5], "expected a number, got list"),
    refused(I, "raw NaN", "strength", float("nan"), "finite", raw=True),
    refused(I, "negative height", "height", -256, "between 256 and 2048"),
    refused(I, "no image", "image", None, "no image given"),
    refused(I, "a truncated PNG", "image", Pic("truncated.png"), r"could not read truncated\.png"),
    refused(I, "a number for the prompt", "prompt", 12345, "expected text, got int"),
    refused(I, "a 401-digit strength", "strength", TOO_BIG, f"between 0 and 1, {SHOWN_TOO_BIG}$"),
    refused(I, "a 401-digit width", "width", -TOO_BIG, r"between 256 and 2048, got -100000000000…"),
    refused(I, "strength just above 1", "strength", 1.0000001, r"between 0 and 1, got 1\.0000001$"),
    refused(I, "a lone surrogate in the prompt", "prompt", "a red \ud800", lone_surrogate(6), raw=True),
    refused(I, "a lone surrogate in the negative prompt", "negative_prompt", "\ud800", lone_surrogate(0), raw=True),
    handled(I, "16-bit grayscale (I;16)", {"image": Pic("gray16.png")}, "I;16 input converted to 8-bit RGB"),
    handled(I, "1-bit black and white", {"image": Pic("bits.png")}, "1 input converted to RGB"),
    handled(I, "a 1 MB prompt", {"prompt": "house " * (MB // 6)}, r"prompt.*truncated"),
    # /generate_video
    refused(VID, "no image", "image", None, "no image given"),
    refused(VID, "a path as text, not an upload", "image", "photo.png", "expected an uploaded file"),
    refused(VID, "a truncated PNG", "image", Pic("truncated.png"), r"could not read truncated\.png"),
    refused(VID, "a text file", "image", Pic("notes.txt"), r"could not read notes\.txt"),
    refused(VID, "a 1×1 picture", "image", Pic("dot.png"), "each side must be at least"),
    refused(VID, "text for a number", "num_frames", "many", "expected a number, got 'many'"),
    refused(VID, "zero frames", "num_frames", 0, "between 1 and 50"),
    refused(VID, "1000 frames", "num_frames", 1000, "between 1 and 50"),
    refused(VID, "10**9 steps", "steps", 10**9, "between 1 and 100"),
    refused(VID, "a list", "fps", [8], "expected a number, got list"),
    refused(VID, "zero fps", "fps", 0, "between 5 and 30"),
    refused(VID, "negative motion", "motion_bucket_id", -1, "between 1 and 255"),
    refused(VID, "NaN as text", "noise_aug_strength", "nan", "finite"),
    refused(VID, "chunk above the frame count", "decode_chunk_size", 7, "between 0 and 2"),
    refused(VID, "a bool seed", "seed", True, "expected a number, got True"),
    refused(VID, "401-digit frames", "num_frames", TOO_BIG, f"between 1 and 50, {SHOWN_TOO_BIG}$"),
    refused(VID, "a 401-digit fps", "fps", TOO_BIG, f"between 5 and 30, {SHOWN_TOO_BIG}$"),
    refused(VID, "a negative 401-digit motion", "motion_bucket_id", -TOO_BIG, r"between 1 and 255, got -1000"),
    refused(VID, "a 401-digit noise", "noise_aug_strength", TOO_BIG, f"between 0 and 1, {SHOWN_TOO_BIG}$"),
    refused(VID, "401-digit steps", "steps", TOO_BIG, f"between 1 and 100, {SHOWN_TOO_BIG}$"),
    refused(VID, "a 401-digit chunk", "decode_chunk_size", TOO_BIG, f"between 0 and 2, {SHOWN_TOO_BIG}$"),
    refused(VID, "a 401-digit seed", "seed", TOO_BIG, f"between -1 and 4294967295, {SHOWN_TOO_BIG}$"),
    refused(VID, "noise just above 1", "noise_aug_strength", 1.0000001, r"between 0 and 1, got 1\.0000001$"),
    refused(VID, "a lone surrogate for the image", "image", "\ud800", r"expected an uploaded file, got the text",
            raw=True),
    handled(VID, "gray with alpha (LA)", {"image": Pic("gray-alpha.png")}, "LA input: transparent areas"),
    handled(VID, "a 10000×10000 picture", {"image": Pic("huge.png")},
            r"picture downscaled from 10000x10000 to 128x64 \(crop\)"),
    handled(VID, "an EXIF-rotated photo", {"image": Pic("turned.png")},
            "input rotated 90° clockwise from its EXIF orientation"),
    # /orbit
    refused(O, "no image", "image", None, "no image given"),
    refused(O, "a dict that is no file", "image", {"foo": 1}, "expected an uploaded file"),
    refused(O, "a text file named .png", "image", Pic("text.png"), r"could not read text\.png"),
    refused(O, "unknown variant", "variant", "x", "must be one of u, p"),
    refused(O, "a number for the variant", "variant", 3, "must be one of u, p"),
    refused(O, "infinity as text", "elevation_deg", "inf", "finite"),
    refused(O, "above 90 degrees", "elevation_deg", 95, "between -90 and 90"),
    refused(O, "PNG header then garbage", "image", Pic("garbage.png"), r"could not read garbage\.png"),
    refused(O, "10**9 steps", "steps", 10**9, "between 1 and 100"),
    refused(O, "zero steps", "steps", 0, "between 1 and 100"),
    refused(O, "unknown path", "path", "zigzag", "must be one of constant, sine"),
    refused(O, "a list for the path", "path", ["sine"], "must be one of constant, sine"),
    refused(O, "a huge end elevation", "elevation_end_deg", -1e9, "between -90 and 90"),
    refused(O, "a 401-digit elevation", "elevation_deg", TOO_BIG, f"between -90 and 90, {SHOWN_TOO_BIG}$"),
    refused(O, "a negative 401-digit end elevation", "elevation_end_deg", -TOO_BIG,
            r"between -90 and 90, got -100000000000…"),
    refused(O, "401-digit steps", "steps", TOO_BIG, f"between 1 and 100, {SHOWN_TOO_BIG}$"),
    refused(O, "a 401-digit seed", "seed", TOO_BIG, f"between -1 and 4294967295, {SHOWN_TOO_BIG}$"),
    refused(O, "elevation just above 90", "elevation_deg", 90.0000001, r"between -90 and 90, got 90\.0000001$"),
    refused(O, "a lone surrogate in the variant", "variant", "p\ud800", lone_surrogate(1), raw=True),
    refused(O, "a lone surrogate in the path", "path", "\ud800", lone_surrogate(0), raw=True),
    handled(O, "1-bit black and white", {"image": Pic("bits.png")}, "1 input converted to RGB"),
    # /chat
    refused(C, "empty message", "message", "", "is empty"),
    refused(C, "missing message", "message", None, "is empty"),
    refused(C, "a number for the message", "message", 5, "content must be text"),
    refused(C, "a 1 MB message", "message", "x" * MB, "the limit is 20,000"),
    refused(C, "text for the history", "history", "hello", "expected a list of messages, got str"),
    refused(C, "a dict for the history", "history", {"role": "user"}, "expected a list of messages, got dict"),
    refused(C, "numbers in the history", "history", [1, 2], "expected a message", field="history[0]"),
    refused(C, "a triple in the history", "history", [["a", "b", "c"]], "a pair must be", field="history[0]"),
    refused(C, "an unknown role", "history", [{"role": "robot", "content": "x"}], "role must be one of",
            field="history[0]"),
    refused(C, "a system message in the history", "history", [{"role": "system", "content": "x"}],
            "pass it as system_prompt", field="history[0]"),
    refused(C, "a text part that is no text", "history", [{"role": "user", "content": [{"type": "text", "text": 5}]}],
            "needs its 'text' as a string", field="history[0]"),
    refused(C, "text for a number", "temperature", "hot", "expected a number, got 'hot'"),
    refused(C, "negative temperature", "temperature", -1, "between 0 and 2"),
    refused(C, "raw NaN", "temperature", float("nan"), "finite", raw=True),
    refused(C, "zero top_p", "top_p", 0, "greater than 0"),
    refused(C, "10**9 new tokens", "max_new_tokens", 10**9, "between 1 and 4096"),
    refused(C, "zero new tokens", "max_new_tokens", 0, "between 1 and 4096"),
    refused(C, "a number for the system prompt", "system_prompt", 5, "expected text, got int"),
    refused(C, "a 1 MB system prompt", "system_prompt", "s" * MB, "the limit is 8,000"),
    refused(C, "a 401-digit temperature", "temperature", TOO_BIG, f"between 0 and 2, {SHOWN_TOO_BIG}$"),
    refused(C, "a negative 401-digit top_p", "top_p", -TOO_BIG, r"between 0 and 1, got -100000000000…"),
    refused(C, "401-digit new tokens", "max_new_tokens", TOO_BIG, f"between 1 and 4096, {SHOWN_TOO_BIG}$"),
    refused(C, "temperature just above 2", "temperature", 2.0000001, r"between 0 and 2, got 2\.0000001$"),
    refused(C, "a lone surrogate in the message", "message", "hi \ud800", lone_surrogate(3), raw=True),
    refused(C, "a lone surrogate in the system prompt", "system_prompt", "\ud800", lone_surrogate(0), raw=True),
    refused(C, "a lone surrogate in the history", "history",
            [{"role": "user", "content": "ok"},
             {"role": "assistant", "content": [{"type": "text", "text": "x\ud800"}]}],
            lone_surrogate(1), field="history[1]", raw=True),
    refused(C, "history content nested 200 deep", "history", [{"role": "user", "content": nested(200, "deep")}],
            "content is nested too deeply", field="history[0]"),
    refused(C, "a text part nested 200 deep", "history",
            [{"role": "user", "content": nested(200, {"type": "text", "text": "deep"})}],
            "content is nested too deeply", field="history[0]"),
    refused(C, "a message nested 200 deep", "message", nested(200, "hi"), "content is nested too deeply"),
    handled(C, "the message as a list of text parts", {"message": [{"type": "text", "text": "hi"}]},
            same_as={"message": "hi"}),
    handled(C, "a 2 MB history", {"history": HUGE_HISTORY}),
    # /unload
    refused(U, "an unknown model", "name", "nope", "Unknown model 'nope'; known: all, cascade"),
    refused(U, "empty", "name", "", "is empty"),
    refused(U, "a path traversal", "name", "../../etc/passwd", "Unknown model"),
    refused(U, "a path inside a name", "name", "cascade/../svd", "Unknown model"),
    refused(U, "one dot too many", "name", "cascade.prior.x", "Unknown model"),
    refused(U, "a number", "name", 5, "expected text, got int"),
    refused(U, "missing", "name", None, "expected text, got NoneType"),
    refused(U, "a list", "name", ["all"], "expected text, got list"),
    refused(U, "a bool", "name", True, "expected text, got bool"),
    refused(U, "a 1 MB name", "name", "x" * MB, "is 1,048,576 characters"),
    refused(U, "a 401-digit number", "name", TOO_BIG, "expected text, got int"),
    # /unload's check is tabs/system.py's: it refuses the name as unknown, escaped (no raw surrogate).
    # /generate_image_sd, /img2img_sd, /inpaint
    refused(SD, "a model the preset does not offer", "model", "sd9", "must be one of sd3.5-large, sd3.5-large-turbo, "
                                                                      "sd3.5-medium, sdxl"),
    refused(SD, "a number for the model", "model", 5, "must be one of .*got 5"),
    refused(SD, "not a multiple of 64", "width", 300, "multiple of 64"),
    refused(SD, "zero steps", "steps", 0, "between 1 and 150"),
    refused(SD, "NaN guidance as text", "guidance", "nan", "finite"),
    refused(SD, "raw NaN guidance", "guidance", float("nan"), "finite", raw=True),
    refused(SD, "too many images", "num_images", 9, "between 1 and 4"),
    refused(SD, "empty prompt", "prompt", "", "is empty"),
    refused(S2, "no image", "image", None, "no image given"),
    refused(S2, "a width below the range", "width", 128, "between 256 and 2048"),
    refused(S2, "strength above 1", "strength", 2, "between 0 and 1"),
    refused(S2, "an unknown model", "model", "sdxl-turbo", "must be one of"),
    refused(S2, "a text file", "image", Pic("notes.txt"), r"could not read notes\.txt"),
    refused(S2, "a fractional seed", "seed", 1.5, "whole number"),
    refused(INP, "no mask", "mask", None, "no image given"),
    refused(INP, "a mask of another size", "mask", Pic("small-mask.png"), "is 100×60 but the image is 200×120"),
    refused(INP, "an empty mask", "mask", Pic("empty-mask.png"), "is empty"),
    refused(INP, "a text file for the mask", "mask", Pic("notes.txt"), r"could not read notes\.txt"),
    refused(INP, "negative strength", "strength", -0.5, "between 0 and 1"),
    refused(INP, "Stable Cascade as the model", "model", "cascade", "must be one of"),
    handled(INP, "an RGB mask", {"mask": Pic("mask-rgb.png")}, same_as={}),
    refused(AUD, "zero seconds", "seconds", 0, r"more than 0 and at most 47 seconds, got 0"),
    refused(AUD, "longer than the model's 47 s", "seconds", 48, r"at most 47 seconds, got 48"),
    refused(AUD, "negative seconds", "seconds", -3, "more than 0"),
    refused(AUD, "seconds as words", "seconds", "ten", "number"),
    refused(AUD, "raw NaN guidance", "guidance", float("nan"), "finite", raw=True),
    refused(AUD, "NaN guidance as text", "guidance", "nan", "finite"),
    refused(AUD, "zero steps", "steps", 0, "between 1 and 500"),
    refused(AUD, "too many steps", "steps", 10_000, "between 1 and 500"),
    refused(AUD, "fractional steps", "steps", 2.5, "whole number"),
    refused(AUD, "empty prompt", "prompt", "", "is empty"),
    refused(AUD, "a number for the prompt", "prompt", 42, "text"),
    handled(AUD, "a huge prompt", {"prompt": "rain " * 40_000}, r"prompt cut to"),
    refused(U, "a lone surrogate", "name", "\ud800", r"Unknown model '\\ud800'", raw=True),
    handled(U, "spaces around 'all'", {"name": "  all  "}),
]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good, broken and unusual pictures (see the ``Pic`` names in CASES)."""
    folder = tmp_path_factory.mktemp("bad-pictures")
    rng = np.random.default_rng(9)
    Image.fromarray((rng.random((120, 200, 3)) * 255).astype(np.uint8)).save(folder / "photo.png")
    cutout = (rng.random((80, 100, 4)) * 255).astype(np.uint8)
    cutout[..., 3] = 0
    cutout[10:70, 20:80, 3] = 255
    Image.fromarray(cutout, "RGBA").save(folder / "cutout.png")
    whole = (folder / "photo.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 20)
    (folder / "text.png").write_text("hello, I am text")
    (folder / "notes.txt").write_text("hello")
    (folder / "bomb.png").write_bytes(png_header_only(12_000, 12_000))
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    mask = Image.new("L", (200, 120), 0)
    mask.paste(255, (60, 30, 140, 90))
    mask.save(folder / "mask.png")
    mask.convert("RGB").save(folder / "mask-rgb.png")
    mask.resize((100, 60)).save(folder / "small-mask.png")
    Image.new("L", (200, 120), 0).save(folder / "empty-mask.png")
    Image.new("CMYK", (96, 64), (0, 100, 200, 0)).save(folder / "cmyk.jpg")
    Image.new("I;16", (96, 64), 40_000).save(folder / "gray16.png")
    Image.new("1", (96, 64), 1).save(folder / "bits.png")
    Image.new("LA", (96, 64), (100, 128)).save(folder / "gray-alpha.png")
    Image.new("L", (10_000, 10_000), 200).save(folder / "huge.png")  # 100 MP in about 120 kB
    # Palette index 0 (red) is transparent: the app must see white there, and green elsewhere.
    palette = Image.new("P", (96, 64), 1)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(0, (0, 0, 48, 64))
    palette.save(folder / "palette.png", transparency=0)
    on_white = Image.new("RGB", (96, 64), (0, 255, 0))
    on_white.paste((255, 255, 255), (0, 0, 48, 64))
    on_white.save(folder / "palette-on-white.png")
    # Stored landscape, shown portrait: the app must see exactly the upright picture.
    turned = Image.fromarray((rng.random((120, 200, 3)) * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90° clockwise to display
    turned.save(folder / "turned.png", exif=exif)
    turned.transpose(Image.Transpose.ROTATE_270).save(folder / "upright.png")
    return folder


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` but holds one row: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Studio, Client, str]]:
    """One app for the whole matrix, with its Studio (to see that no model is left in use)."""
    with serve_tiny(models_dir, tmp_path_factory.mktemp("bad-outputs")) as (studio, url):
        yield studio, Client(url, verbose=False), url


def inputs(endpoint: str, overrides: dict[str, Any], pictures: Path) -> list[Any]:
    values = {**DEFAULTS[endpoint], **overrides}
    if "image" in values and isinstance(values["image"], str):
        values["image"] = str(pictures / values["image"])  # a real path, sent as text
    return [handle_file(str(pictures / v.name)) if isinstance(v, Pic) else v for v in values.values()]


def call(client: Client, endpoint: str, overrides: dict[str, Any], pictures: Path) -> Any:
    return client.predict(*inputs(endpoint, overrides, pictures), api_name=endpoint)


def call_raw(url: str, endpoint: str, overrides: dict[str, Any], pictures: Path) -> str | None:
    """Run ``endpoint`` over the raw HTTP API, NaN and Infinity written into the JSON; the error or None."""
    with httpx.Client(base_url=url, timeout=60) as http:
        values = []
        # gradio_client fills in inputs left out; over raw HTTP every input must be sent (gradio
        # 6.31 refuses a short list with its hidden error), /chat's two optional extras included.
        for value in [*{**DEFAULTS[endpoint], **overrides}.values(), *RAW_EXTRAS.get(endpoint, [])]:
            if isinstance(value, Pic):
                with open(pictures / value.name, "rb") as file:
                    (path,) = http.post("gradio_api/upload", files={"files": (value.name, file)}).json()
                value = {"path": path, "meta": {"_type": "gradio.FileData"}}
            values.append(value)
        # allow_nan: NaN, Infinity as JavaScript writes them; ensure_ascii: a lone surrogate as \ud800.
        body = json.dumps({"data": values})
        with pytest.raises(ValueError):  # what gradio_client's encoder (httpx 0.28) refuses: why this goes raw
            json.dumps({"data": values}, ensure_ascii=False, allow_nan=False).encode("utf-8")
        name = endpoint.strip("/")
        event = http.post(f"gradio_api/call/{name}", content=body, headers={"content-type": "application/json"})
        stream = http.get(f"gradio_api/call/{name}/{event.json()['event_id']}").text
    if "event: error" not in stream:
        return None
    data = stream.split("event: error", 1)[1].split("data:", 1)[1].split("\n", 1)[0]
    return (json.loads(data) or {}).get("error") or ""


def fingerprint(endpoint: str, result: Any) -> Any:
    """What must repeat exactly for the same inputs and seed: pixels, frames, text, placements."""
    if endpoint in (G, V, I, SD, S2, INP):
        return [np.asarray(Image.open(item["image"]).convert("RGB")) for item in result[0]]
    if endpoint == VID:
        return read_frames(result[0]["video"] if isinstance(result[0], dict) else result[0])
    if endpoint == O:
        return np.asarray(Image.open(result[1]).convert("RGB"))
    if endpoint == C:
        return result
    if endpoint == AUD:
        import soundfile

        return soundfile.read(result[0], always_2d=True)[0]
    return sorted((m["name"], m["placement"]) for m in result["models"])


def read_frames(path: str) -> np.ndarray:
    reader = imageio_ffmpeg.read_frames(path)
    width, height = next(reader)["size"]
    return np.stack([np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader])


def same(first: Any, second: Any) -> bool:
    if isinstance(first, list) and first and isinstance(first[0], np.ndarray):
        return len(first) == len(second) and all(np.array_equal(a, b) for a, b in zip(first, second))
    if isinstance(first, np.ndarray):
        return np.array_equal(first, second)
    return first == second


def check_result(endpoint: str, values: dict[str, Any], result: Any, notice: str | None) -> None:
    """A handled input's result is a correct one: sizes, counts, the seed asked for, the notice."""
    if endpoint == U:
        assert {m["placement"] for m in result["models"]} <= {"disk"}
        return
    if endpoint == C:
        assert isinstance(result, str)
        return
    info = result[-1]
    assert info["seed"] == values["seed"] and info["preset"] == "tiny"
    if endpoint in (G, V, I, SD, S2, INP):
        gallery = result[0]
        assert len(gallery) == values.get("num_images", 1)
        assert all(Image.open(item["image"]).size == (info["width"], info["height"]) for item in gallery)
    elif endpoint == VID:
        assert fingerprint(VID, result).shape[0] == values["num_frames"]
    elif endpoint == AUD:
        assert fingerprint(AUD, result).shape == (round(values["seconds"] * 44_100), 2)
    else:
        assert Image.open(result[1]).size == (7 * 64, 3 * 64)  # 21 views of the tiny model's 64²
    if notice:
        assert any(re.search(notice, text) for text in info["notices"]), info["notices"]


@pytest.fixture(scope="module")
def reference(served: tuple[Studio, Client, str], pictures: Path) -> dict[str, Any]:
    """Each endpoint's fixed-seed result on good inputs, taken before the matrix."""
    _, client, _ = served
    return {endpoint: fingerprint(endpoint, call(client, endpoint, {}, pictures)) for endpoint in DEFAULTS}


def test_reference_results_before_the_matrix(reference: dict[str, Any]) -> None:
    assert set(reference) == set(DEFAULTS)
    assert isinstance(reference[C], str) and reference[C]


def test_every_endpoint_gets_at_least_six_varied_bad_inputs() -> None:
    for endpoint in DEFAULTS:
        cases = [case for case in CASES if case.endpoint == endpoint]
        assert len(cases) >= 6, endpoint
        assert len({case.label for case in cases}) == len(cases), endpoint


@pytest.mark.parametrize("case", CASES, ids=[f"{c.endpoint.strip('/')}-{c.label}" for c in CASES])
def test_bad_input(served: tuple[Studio, Client, str], pictures: Path, reference: dict[str, Any], tally: Any,
                   case: Case) -> None:
    _, client, url = served
    values = {**DEFAULTS[case.endpoint], **case.overrides}
    message, result = None, None
    try:
        if case.raw:
            message = call_raw(url, case.endpoint, case.overrides, pictures)
        else:
            result = call(client, case.endpoint, case.overrides, pictures)
    except AppError as error:
        message = str(error)
    clear = (message is not None and case.field is not None and HIDDEN not in message
             and re.match(named(case.field), message) is not None)
    tally.add("bad_inputs", case.endpoint, tried=1, answered=int(clear),
              handled=int(case.field is None and message is None))
    if case.field is not None:
        assert message is not None, f"accepted: {str(result)[:300]}"
        assert clear, message
        assert re.search(case.expect or "", message), message
        return
    assert message is None, message
    check_result(case.endpoint, values, result, case.expect)
    if case.same_as:
        twin = call(client, case.endpoint, case.same_as, pictures)
        assert same(fingerprint(case.endpoint, result), fingerprint(case.endpoint, twin))


def test_after_the_matrix_the_app_answers_and_repeats_its_results(
        served: tuple[Studio, Client, str], pictures: Path, reference: dict[str, Any]) -> None:
    studio, client, _ = served
    status = client.predict(api_name="/status")
    assert status["preset"] == "tiny" and status["device"] == "cpu"
    assert all(studio.manager.component(m["name"]).in_use == 0 for m in status["models"])
    for endpoint in (G, V, I, VID, O, C, AUD):  # /unload's reference ran before any model was loaded
        again = fingerprint(endpoint, call(client, endpoint, {}, pictures))
        assert same(reference[endpoint], again), endpoint


def test_uploaded_path_takes_only_files_in_gradios_upload_folder(tmp_path: Path) -> None:
    """The API handlers' last check, whatever gradio let through: a file object must be an upload."""
    from gradio.utils import get_upload_folder

    from backends.runtime.errors import InputError
    from tabs.common import FILE_DATA, uploaded_path

    upload = Path(get_upload_folder()) / "some-hash" / "photo.png"
    assert uploaded_path("image", {"path": str(upload), "meta": FILE_DATA}) == str(upload)
    assert uploaded_path("image", None) is None and uploaded_path("image", "") is None
    for value, message in [({"path": str(tmp_path / "secret.png"), "meta": FILE_DATA}, "was not uploaded"),
                           ({"path": str(upload / ".." / ".." / ".." / "etc" / "passwd"), "meta": FILE_DATA},
                            "was not uploaded"),
                           ({"path": str(upload)}, "got an object with keys path"),
                           (str(upload), "got the text"), (3.5, "got float")]:
        with pytest.raises(InputError, match=f"^image: .*{message}"):
            uploaded_path("image", value)
