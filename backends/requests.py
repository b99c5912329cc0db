"""Validated requests: one dataclass per task, checked before any model is touched.

This module imports no torch, so tabs can build and validate requests cheaply. Every check raises
``InputError`` naming the public field (as in DESIGN.md's API table) and the allowed values.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

from backends.errors import InputError

#: Stable Cascade compresses 42.67x into stage C and 4x in stage A, so sizes that are multiples of
#: 128 (= 3 stage C latent pixels) come back at exactly the size asked for; other sizes would be
#: silently rounded by the pipeline.
SIZE_MULTIPLE = 128
MIN_SIZE = 256
MAX_SIZE = 2048
MAX_IMAGES = 4
MAX_PRIOR_STEPS = 100
MAX_DECODER_STEPS = 50
MAX_GUIDANCE = 20.0
#: Seeds are 32-bit so that they can be typed, shown and reused everywhere (numpy, JS numbers).
MAX_SEED = 2**32 - 1
#: Longer input is cut before tokenising; CLIP reads 77 tokens anyway, and this keeps a pasted
#: book from costing seconds of tokeniser time. The cut is reported in the info.
MAX_PROMPT_CHARS = 4000


def _number(field: str, value: Any) -> float:
    """Parse a numeric input that may arrive as str, int or float from the API."""
    if isinstance(value, bool):
        raise InputError(field, f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise InputError(field, f"expected a number, got {value!r}") from None
    elif value is None:
        raise InputError(field, "is required")
    else:
        raise InputError(field, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(number):
        raise InputError(field, f"expected a finite number, got {value!r}")
    return number


def parse_int(field: str, value: Any, low: int, high: int) -> int:
    """Return ``value`` as an int in ``[low, high]`` or raise ``InputError`` naming ``field``."""
    number = _number(field, value)
    if number != int(number):
        raise InputError(field, f"expected a whole number, got {value!r}")
    result = int(number)
    if not low <= result <= high:
        raise InputError(field, f"must be between {low} and {high}, got {result}")
    return result


def parse_float(field: str, value: Any, low: float, high: float) -> float:
    """Return ``value`` as a float in ``[low, high]`` or raise ``InputError`` naming ``field``."""
    result = _number(field, value)
    if not low <= result <= high:
        raise InputError(field, f"must be between {low:g} and {high:g}, got {result:g}")
    return result


def parse_text(field: str, value: Any, max_chars: int = MAX_PROMPT_CHARS) -> tuple[str, bool]:
    """Return ``(text, was_cut)``; ``None`` counts as empty text."""
    if value is None:
        return "", False
    if not isinstance(value, str):
        raise InputError(field, f"expected text, got {type(value).__name__}")
    if len(value) > max_chars:
        return value[:max_chars], True
    return value, False


def parse_size(field: str, value: Any) -> int:
    """A width or height: a multiple of ``SIZE_MULTIPLE`` in ``[MIN_SIZE, MAX_SIZE]``."""
    size = parse_int(field, value, MIN_SIZE, MAX_SIZE)
    if size % SIZE_MULTIPLE:
        lower = size // SIZE_MULTIPLE * SIZE_MULTIPLE
        raise InputError(
            field,
            f"must be a multiple of {SIZE_MULTIPLE} between {MIN_SIZE} and {MAX_SIZE}, got {size} "
            f"(try {max(lower, MIN_SIZE)} or {min(lower + SIZE_MULTIPLE, MAX_SIZE)})",
        )
    return size


def parse_seed(field: str, value: Any) -> int:
    """A seed in ``[0, MAX_SEED]``, or -1 (or empty) for a fresh random seed."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return random.randint(0, MAX_SEED)
    seed = parse_int(field, value, -1, MAX_SEED)
    return random.randint(0, MAX_SEED) if seed == -1 else seed


@dataclass(frozen=True)
class TextToImageRequest:
    """One Stable Cascade text-to-image job, already validated; ``seed`` is never -1 here."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    prior_steps: int
    decoder_steps: int
    prior_guidance: float
    decoder_guidance: float
    num_images: int
    seed: int
    #: Fields whose text was cut to MAX_PROMPT_CHARS, reported to the user in the info.
    truncated: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        prompt: Any,
        negative_prompt: Any,
        width: Any,
        height: Any,
        prior_steps: Any,
        decoder_steps: Any,
        prior_guidance: Any,
        decoder_guidance: Any,
        num_images: Any,
        seed: Any,
    ) -> "TextToImageRequest":
        """Validate raw inputs (in the ``/generate_image`` order) into a request."""
        text, cut = parse_text("prompt", prompt)
        if not text.strip():
            raise InputError("prompt", "is empty; describe the image you want")
        negative, cut_negative = parse_text("negative_prompt", negative_prompt)
        return cls(
            prompt=text,
            negative_prompt=negative,
            width=parse_size("width", width),
            height=parse_size("height", height),
            prior_steps=parse_int("prior_steps", prior_steps, 1, MAX_PRIOR_STEPS),
            decoder_steps=parse_int("decoder_steps", decoder_steps, 1, MAX_DECODER_STEPS),
            prior_guidance=parse_float("prior_guidance", prior_guidance, 0.0, MAX_GUIDANCE),
            decoder_guidance=parse_float("decoder_guidance", decoder_guidance, 0.0, MAX_GUIDANCE),
            num_images=parse_int("num_images", num_images, 1, MAX_IMAGES),
            seed=parse_seed("seed", seed),
            truncated=tuple(name for name, was in (("prompt", cut), ("negative_prompt", cut_negative)) if was),
        )

    def as_dict(self) -> dict[str, Any]:
        """The parameters as plain JSON-able values (for info and the PNG metadata)."""
        data = asdict(self)
        data["truncated"] = list(self.truncated)
        return data
