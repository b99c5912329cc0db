"""Stop strings (OpenAI's ``stop``): the reply ends before the first one, and a stream never shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backends.families import load_context
from backends.runtime.errors import InputError
from backends.runtime.loading import LoadContext
from backends.runtime.progress import no_progress
from backends.stablelm.stops import StopStrings
from tests.backends.stablelm.test_backend import make_backend, request


def shown(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    watch = StopStrings(stops)
    out = [watch.push(piece) for piece in pieces]
    return [*out, watch.flush()], watch.hit


def test_a_stop_string_split_across_pieces_is_held_back_then_cut() -> None:
    out, hit = shown(["\nUser:"], ["Hello", " there\n", "Us", "er: more", " text"])
    assert out == ["Hello", " there", "", "", "", ""] and hit
    assert "".join(out) == "Hello there"


def test_a_false_start_is_given_out_once_it_cannot_be_a_stop() -> None:
    out, hit = shown(["\nUser:"], ["line\n", "Usual", " end"])
    assert out == ["line", "\nUsual", " end", ""] and not hit


def test_the_earliest_of_several_stops_wins_and_held_text_flushes_at_the_end() -> None:
    out, hit = shown(["END", "stop"], ["a stop here END", "x"])
    assert "".join(out) == "a " and hit
    out, hit = shown(["END"], ["almost E", "N"])
    assert out == ["almost ", "", "EN"] and not hit  # the reply ended without completing "END"
    assert shown([], ["as", "is"]) == (["as", "is", ""], False)


@pytest.fixture(scope="module")
def ctx(tiny_cache: Path) -> LoadContext:
    return load_context(tiny_cache)


def reply(backend: Any, **fields: Any) -> tuple[str, dict[str, Any]]:
    chunks = list(backend.stream("chat", request(**fields), no_progress))
    return "".join(c.text for c in chunks), chunks[-1].stats.as_dict()


def test_the_backend_ends_the_reply_at_a_stop_string(ctx: LoadContext) -> None:
    backend, _ = make_backend(ctx)
    full, full_stats = reply(backend, max_new_tokens=60)
    assert len(full) > 20 and full_stats["stop_reason"] == "length"
    stop = full[12:15]
    text, stats = reply(backend, max_new_tokens=60, stop=(stop,))
    assert text == full[:full.index(stop)]
    assert stats["stop_reason"] == "stop" and stats["tokens"] < full_stats["tokens"]


def test_stop_strings_must_be_text() -> None:
    for bad in (("",), ("ok", 3), ["a list"]):
        with pytest.raises(InputError, match="stop: must be a list of non-empty strings"):
            request(stop=bad)
