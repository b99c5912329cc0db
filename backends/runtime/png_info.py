"""PNG Info: the generation parameters a PNG carries, read back (the AUTOMATIC1111 habit).

Two layouts are read, both from PNG text chunks:

- **ours** (``studio``): the JSON ``OutputWriter.save_images`` writes beside the text;
- **AUTOMATIC1111's** (``parameters``): the prompt, then ``Negative prompt: ...``, then one line
  ``Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x768, ...``. Ours writes this
  layout too (``outputs.a1111_parameters``), so a file whose JSON was stripped still reads.

The answer maps what it can to the Image tab's fields (``FIELDS``: A1111's Steps becomes
``prior_steps``, its CFG scale ``prior_guidance``), keeps every other parameter under ``other``
by its own name, and the chunk's text under ``raw``. It says what the file says: fitting values
to the tab's ranges is the tab's job.

A PNG from anywhere is untrusted input. Only PIL's PNG plugin opens it, and only its text chunks
are read: nothing is unpickled, evaluated or executed, and the pixels are decoded only to reach
text stored after them, for pictures under ``MAX_DECODED_PIXELS``. The parameter line is parsed
by a linear scan, not a backtracking regex, so a megabyte-long line costs milliseconds.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from backends.runtime.errors import InputError

logger = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The Image tab's fields, in ``/generate_image``'s order: what a restore can fill in.
FIELDS = ("prompt", "negative_prompt", "width", "height", "prior_steps", "decoder_steps", "prior_guidance",
          "decoder_guidance", "num_images", "seed")
TEXT_FIELDS = frozenset({"prompt", "negative_prompt"})
FLOAT_FIELDS = frozenset({"prior_guidance", "decoder_guidance"})
#: A1111's names for the fields it shares with the Image tab (the rest map by their snake_case
#: name, which is how our own ``parameters`` text spells ours: "Prior steps" is prior_steps).
A1111_NAMES = {"steps": "prior_steps", "cfg_scale": "prior_guidance"}
#: The chunks read, by key: ours first, as it keeps types that text loses.
OURS, A1111 = "studio", "parameters"
#: Text stored after the pixels is found only by decoding them; 64 MP (192 MB as RGB) is far
#: above any generated picture and keeps a decompression bomb from costing gigabytes.
MAX_DECODED_PIXELS = 64 * 2**20
#: JSON from a file may nest a thousand levels; what is returned is cut at this depth, so the
#: walk that cleans it (and the JSON encoder after it) cannot run out of stack.
MAX_DEPTH = 32
#: A1111 takes the last line for parameters only when it holds at least this many (its rule).
MIN_PARAMETERS = 3
NEGATIVE = "Negative prompt:"


def read_png_info(path: str | Path) -> dict[str, Any]:
    """The generation parameters the PNG at ``path`` carries.

    Returns:
        ``{"source": "cascade-studio" | "a1111", <FIELDS found>, "other": {...}, "raw": text}``:
        ``source`` says whose layout was read, ``other`` holds every other parameter by the
        name the file gives it, ``raw`` the chunk's text as stored.

    Raises:
        InputError: (field ``image``) the file is not a readable PNG or carries no parameters.
    """
    path = Path(path)
    texts = _text_chunks(path)
    if OURS in texts:
        ours = _ours(texts[OURS], texts.get(A1111))
        if ours is not None:
            return _clean(ours)
        logger.info("%s: its %r chunk is not a JSON object; reading %r instead", path.name, OURS, A1111)
    if A1111 in texts and texts[A1111].strip():
        return _clean(parse_a1111(texts[A1111]))
    found = ", ".join(sorted(texts)[:8]) or "none"
    ours = f"its {OURS!r} chunk is not a JSON object" if OURS in texts else f"no {OURS!r} chunk (this app's JSON)"
    raise InputError("image", f"{path.name} carries no generation parameters: it has no {A1111!r} text chunk "
                              f"(AUTOMATIC1111's layout, also written by this app) and {ours}; its text "
                              f"chunks: {found}. Pick a PNG saved by this app or by an AUTOMATIC1111-style "
                              "web UI.")


def _text_chunks(path: Path) -> dict[str, str]:
    """The PNG's text chunks (tEXt, zTXt, iTXt) by key; refuses anything but a readable PNG."""
    name = path.name or str(path)[:80]
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(PNG_MAGIC))
    except OSError as error:
        raise InputError("image", f"could not read {name}: {error.strerror or error}") from error
    if head != PNG_MAGIC:
        raise InputError("image", f"{name} is not a PNG file; PNG Info reads the text chunks of PNG files, "
                                  "such as the ones this app saves")
    try:
        with Image.open(path, formats=["PNG"]) as image:
            texts = {key: value for key, value in image.info.items() if isinstance(value, str)}
            if OURS not in texts and A1111 not in texts and image.width * image.height <= MAX_DECODED_PIXELS:
                # Chunks after the pixel data appear only once PIL has read past it.
                texts = {key: value for key, value in image.text.items() if isinstance(value, str)}
    except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError, OSError,
            EOFError) as error:
        # SyntaxError is how PIL's PNG plugin reports a broken chunk; ValueError a text chunk
        # over PIL's MAX_TEXT_CHUNK (1 MB unpacked); OSError and EOFError a truncated file;
        # DecompressionBombError a header claiming over 2 x PIL's MAX_IMAGE_PIXELS (Image.open
        # checks it before any chunk is read).
        raise InputError("image", f"could not read {name} as a PNG: {error}") from error
    return {str(key): _utf8_in_latin1(str(value)) for key, value in texts.items()}


def _utf8_in_latin1(text: str) -> str:
    """Undo UTF-8 written into a tEXt chunk, which PNG defines (and PIL decodes) as Latin-1.

    Some tools do that; their "café" comes back as "cafÃ©". Text that is not valid UTF-8 once
    re-encoded was real Latin-1 and stays as it is.
    """
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def _ours(text: str, a1111: str | None) -> dict[str, Any] | None:
    """Our JSON chunk as an answer; None when it is not a JSON object (the caller falls back)."""
    try:
        # NaN and Infinity (which json allows) stay text: they are no parameter a field can take.
        data = json.loads(text, parse_constant=str)
    except (ValueError, RecursionError):  # ValueError: also an int beyond Python's 4,300 digits
        return None
    if not isinstance(data, dict):
        return None
    answer: dict[str, Any] = {"source": "cascade-studio"}
    other: dict[str, Any] = {}
    for key, value in data.items():
        if key in FIELDS and _fits(key, value):
            # 256.0 for a width is the whole number it says (JSON has one number type).
            answer[key] = int(value) if isinstance(value, float) and key not in FLOAT_FIELDS else value
        else:
            other[key] = value
    return {**answer, "other": other, "raw": a1111 if a1111 and a1111.strip() else text}


def _fits(field: str, value: Any) -> bool:
    """Whether ``value`` has the type the Image tab's ``field`` takes (finite, not a bool)."""
    if field in TEXT_FIELDS:
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if field in FLOAT_FIELDS:
        return math.isfinite(value)
    return isinstance(value, int) or (math.isfinite(value) and value.is_integer())


def parse_a1111(text: str) -> dict[str, Any]:
    """An AUTOMATIC1111 ``parameters`` text, mapped to the Image tab's fields where they exist.

    As A1111 reads it (``parse_generation_parameters``): the last line holds the parameters when
    it has at least three ``Key: value`` pairs; the lines before it are the prompt, up to one
    starting ``Negative prompt:``, and the negative prompt from there on.
    """
    *lines, last = text.strip().split("\n")
    pairs = parameter_pairs(last)
    if len(pairs) < MIN_PARAMETERS:
        lines.append(last)
        pairs = []
    prompt: list[str] = []
    negative: list[str] | None = None
    for line in lines:
        line = line.strip()
        if negative is None and line.startswith(NEGATIVE):
            negative = [line[len(NEGATIVE):].strip()]
        elif negative is not None:
            negative.append(line)
        else:
            prompt.append(line)
    # No "Negative prompt:" line is how A1111 writes an empty one.
    answer: dict[str, Any] = {"source": "a1111", "prompt": "\n".join(prompt),
                              "negative_prompt": "\n".join(negative or [])}
    other: dict[str, Any] = {}
    for key, value in pairs:
        field = _field_of(key)
        if key.strip().lower() == "size" and _size(value) is not None:
            answer["width"], answer["height"] = _size(value)  # type: ignore[misc]
        elif field is not None and field not in answer and (number := _number(field, value)) is not None:
            answer[field] = number
        else:
            other[key] = value
    return {**answer, "other": other, "raw": text}


def _field_of(key: str) -> str | None:
    """The Image tab's field an A1111 key names ("CFG scale", or our "Prior steps"), if any."""
    snake = "_".join(key.strip().lower().replace("-", " ").split())
    field = A1111_NAMES.get(snake, snake)
    return field if field in FIELDS and field not in TEXT_FIELDS else None


def _number(field: str, text: str) -> int | float | None:
    """``text`` as the field's number; None when it is none (the pair then stays in ``other``)."""
    text = text.strip()
    if not text or len(text) > 40:  # no parameter of ours needs more digits
        return None
    try:
        value = float(text) if field in FLOAT_FIELDS else int(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _size(text: str) -> tuple[int, int] | None:
    """A1111's ``512x768``."""
    width, sep, height = text.strip().lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or len(width) > 6 or len(height) > 6:
        return None
    return int(width), int(height)


def parameter_pairs(line: str) -> list[tuple[str, str]]:
    """The ``Key: value`` pairs of A1111's parameter line, in order, values unquoted.

    A value is the text up to the next comma, or a JSON string in double quotes (A1111 quotes
    values that hold commas: ``Lora hashes: "a: 1, b: 2"``). A stretch without a ``Key:`` before
    its comma is skipped. One pass over the line: each search starts where the last one ended.
    """
    pairs: list[tuple[str, str]] = []
    position, end = 0, len(line)
    colon = comma = -1  # the next ':' and ',' at or after ``position``; found again only once passed
    unclosed = end  # a quote from here on has no closing one: it was searched for to the end once
    while position < end:
        if colon < position:
            colon = line.find(":", position)
        if comma < position:
            comma = line.find(",", position)
            comma = end if comma < 0 else comma
        if colon < 0:
            break
        if comma < colon:  # no key before this comma
            position = comma + 1
            continue
        key, start = line[position:colon].strip(), colon + 1
        while start < end and line[start] == " ":
            start += 1
        value, stop = None, comma
        closing = _closing_quote(line, start) if start < min(end, unclosed) and line[start] == '"' else None
        if closing is None and start < end and line[start] == '"':
            unclosed = min(unclosed, start)
        if closing is not None:
            value = _unquote(line[start:closing + 1])
            if closing > comma:  # the quoted value held commas: the pair ends at the next one after it
                found = line.find(",", closing + 1)
                stop = comma = end if found < 0 else found
        if _is_key(key):
            pairs.append((key, line[start:stop].strip() if value is None else value))
        position = stop + 1
    return pairs


def _is_key(key: str) -> bool:
    """A1111's key shape: a word character, then words, spaces, dashes or slashes."""
    return bool(key) and (key[0].isalnum() or key[0] == "_") and all(
        c.isalnum() or c in "_ -/" for c in key)


def _closing_quote(line: str, start: int) -> int | None:
    """The index of the quote that closes the JSON string opening at ``start``."""
    index = start + 1
    while index < len(line):
        char = line[index]
        if char == "\\":
            index += 2
            continue
        if char == '"':
            return index
        index += 1
    return None


def _unquote(quoted: str) -> str:
    try:
        value = json.loads(quoted)
    except ValueError:
        return quoted
    return value if isinstance(value, str) else quoted


def _clean(value: Any, depth: int = 0) -> Any:
    """``value`` safe to send as JSON: lone surrogates (which JSON escapes can carry) replaced by
    U+FFFD, and anything nested deeper than ``MAX_DEPTH`` cut to a note."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if depth >= MAX_DEPTH and isinstance(value, (dict, list)):
        return f"… (nested more than {MAX_DEPTH} levels deep; see raw)"
    if isinstance(value, dict):
        return {_clean(str(k)): _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v, depth + 1) for v in value]
    return value
