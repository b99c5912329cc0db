"""Input parsers every family's requests use: numbers, text and seeds, checked before any work.

Each family declares its own request dataclasses (``backends/<family>/requests.py``) and builds them
with these. This module imports no torch, so tabs can build and validate requests cheaply. Every
check raises ``InputError`` naming the public field (as in DESIGN.md's API table) and the allowed
values.
"""

from __future__ import annotations

import math
import random
from typing import Any

from backends.runtime.errors import InputError

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


def parse_seed(field: str, value: Any) -> int:
    """A seed in ``[0, MAX_SEED]``, or -1 (or empty) for a fresh random seed."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return random.randint(0, MAX_SEED)
    seed = parse_int(field, value, -1, MAX_SEED)
    return random.randint(0, MAX_SEED) if seed == -1 else seed
