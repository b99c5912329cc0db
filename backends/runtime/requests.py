"""Input parsers every family's requests use: numbers, text and seeds, checked before any work.

Each family declares its own request dataclasses (``backends/<family>/requests.py``) and builds them
with these. This module imports no torch, so tabs can build and validate requests cheaply. Every
check raises ``InputError`` naming the public field (as in DESIGN.md's API table) and the allowed
values, and shows the value as it was sent: an error about ``90.0000001`` that said "got 90"
would leave the user guessing.
"""

from __future__ import annotations

import math
import random
from typing import Any

from backends.runtime.errors import InputError

#: Seeds are 32-bit so that they can be typed, shown and reused everywhere (numpy, JS numbers).
MAX_SEED = 2**32 - 1


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of a job seeded ``seed``: the next seeds in turn, as in
    AUTOMATIC1111's batch count and Fooocus, wrapping past ``MAX_SEED`` so each stays one a user
    can type."""
    return (seed + index) % (MAX_SEED + 1)


#: Longer input is cut before tokenising; CLIP reads 77 tokens anyway, and this keeps a pasted
#: book from costing seconds of tokeniser time. The cut is reported in the info.
MAX_PROMPT_CHARS = 4000
#: Integers with more digits are shown by their first digits and their length: JSON allows any
#: length, and echoing 400 digits back helps nobody.
SHOWN_DIGITS = 20
#: Text sent back in a message is cut to this many characters (a 1 MB string stays in the request).
SHOWN_CHARS = 80


def shown(value: Any) -> str:
    """``value`` as it was sent, for an error message: ``repr`` with huge ints and long text shortened.

    Python refuses ``str()`` of an int beyond 4,300 digits (``sys.int_max_str_digits``), so the
    digits of a huge int are counted and its leading ones taken arithmetically.
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**SHOWN_DIGITS:
        magnitude = abs(value)
        digits = int(magnitude.bit_length() * math.log10(2))  # may be one short of the true count
        if magnitude >= 10**digits:
            digits += 1
        lead = magnitude // 10 ** (digits - 12)
        return f"{'-' if value < 0 else ''}{lead}… (a {digits:,}-digit number)"
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return f"{value[:SHOWN_CHARS]!r}… ({len(value):,} characters)"
    return repr(value)


def _out_of_range(field: str, value: Any, low: float, high: float) -> InputError:
    def bound(limit: float) -> str:  # ints in full (a seed's 4294967295), floats short (20, not 20.0)
        return str(limit) if isinstance(limit, int) else f"{limit:g}"

    return InputError(field, f"must be between {bound(low)} and {bound(high)}, got {shown(value)}")


def _number(field: str, value: Any, low: float, high: float) -> float:
    """Parse a numeric input that may arrive as str, int or float from the API, within ``[low, high]``.

    The range is checked here too because a number too large for a float (an int of 400 digits
    from JSON, or the text ``"1e400"``) can only be told apart from a real infinity before
    ``float()`` turns it into one, or raises ``OverflowError`` on it.
    """
    if isinstance(value, bool):
        raise InputError(field, f"expected a number, got {value!r}")
    if isinstance(value, int):
        if not low <= value <= high:  # exact for any size of int: no float() involved
            raise _out_of_range(field, value, low, high)
        return float(value)
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise InputError(field, f"expected a number, got {shown(value)}") from None
        if math.isinf(number) and any(char.isdigit() for char in value):
            raise _out_of_range(field, value, low, high)  # digits that overflow, not "inf"
    elif value is None:
        raise InputError(field, "is required")
    else:
        raise InputError(field, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(number):
        raise InputError(field, f"expected a finite number, got {value!r}")
    if not low <= number <= high:
        raise _out_of_range(field, value, low, high)
    return number


def parse_int(field: str, value: Any, low: int, high: int) -> int:
    """Return ``value`` as an int in ``[low, high]`` or raise ``InputError`` naming ``field``.

    The range is checked before wholeness, so ``90.0000001`` for a field of 1 to 50 is reported
    as out of range (with the value as sent) rather than as a fraction.
    """
    number = _number(field, value, low, high)
    if number != int(number):
        raise InputError(field, f"expected a whole number, got {shown(value)}")
    return int(number)


def parse_float(field: str, value: Any, low: float, high: float) -> float:
    """Return ``value`` as a float in ``[low, high]`` or raise ``InputError`` naming ``field``."""
    return _number(field, value, low, high)


def check_unicode(field: str, text: str) -> str:
    """Return ``text`` if it is valid Unicode; refuse a lone surrogate (``"\\ud800"``).

    JSON allows an unpaired surrogate escape, and Python decodes it into a ``str`` that no
    tokenizer, file name or UTF-8 response can carry (tokenizers raise ``TypeError`` on it), so it
    is refused here, naming the field, where the user can still fix it.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        raise InputError(field, f"is not valid Unicode text (a lone surrogate, U+{code:04X}, at position "
                                f"{error.start}); send the text as UTF-8") from None
    return text


def parse_text(field: str, value: Any, max_chars: int = MAX_PROMPT_CHARS) -> tuple[str, bool]:
    """Return ``(text, was_cut)``; ``None`` counts as empty text."""
    if value is None:
        return "", False
    if not isinstance(value, str):
        raise InputError(field, f"expected text, got {type(value).__name__}")
    check_unicode(field, value)
    if len(value) > max_chars:
        return value[:max_chars], True
    return value, False


def parse_seed(field: str, value: Any) -> int:
    """A seed in ``[0, MAX_SEED]``, or -1 (or empty) for a fresh random seed."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return random.randint(0, MAX_SEED)
    seed = parse_int(field, value, -1, MAX_SEED)
    return random.randint(0, MAX_SEED) if seed == -1 else seed
