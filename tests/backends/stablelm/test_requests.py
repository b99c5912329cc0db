"""Chat request validation: every bad input names its field; history arrives in any Gradio shape."""

from __future__ import annotations

from typing import Any

import pytest

from backends.runtime.errors import InputError
from backends.stablelm.requests import (
    MAX_CONTENT_DEPTH,
    MAX_HISTORY_CHARS,
    MAX_MESSAGE_CHARS,
    ChatMessage,
    ChatRequest,
    flatten_content,
    parse_history,
)

HUGE = 10**400  # JSON allows it; no float can hold it
GOOD = dict(message="hi", history=[], system_prompt="be brief", temperature=0.7, top_p=0.95, max_new_tokens=64)


def build(**overrides: Any) -> ChatRequest:
    return ChatRequest.build(**{**GOOD, **overrides})


@pytest.mark.parametrize(("overrides", "message"), [
    ({"message": ""}, "message: is empty"),
    ({"message": "   \n"}, "message: is empty"),
    ({"message": None}, "message: is empty"),
    ({"message": "x" * 50_000}, "message: is 50,000 characters; the limit is 20,000"),
    ({"max_new_tokens": 0}, "max_new_tokens: must be between 1 and 4096, got 0"),
    ({"max_new_tokens": 100_000}, "max_new_tokens: must be between 1 and 4096, got 100000"),
    ({"max_new_tokens": 2.5}, "max_new_tokens: expected a whole number"),
    ({"temperature": -1}, "temperature: must be between 0 and 2, got -1"),
    ({"temperature": "hot"}, "temperature: expected a number"),
    ({"top_p": 0}, "top_p: must be greater than 0 and at most 1"),
    ({"top_p": 1.5}, "top_p: must be between 0 and 1"),
    ({"top_k": -1}, "top_k: must be between 0 and 10000"),
    ({"repetition_penalty": 0.5}, "repetition_penalty: must be between 1 and 2"),
    ({"system_prompt": "s" * 9000}, "system_prompt: is 9,000 characters"),
    ({"history": "hello"}, "history: expected a list of messages"),
    ({"history": [{"role": "system", "content": "x"}]}, r"history\[0\]: role 'system' is not allowed"),
    ({"history": [{"role": "bot", "content": "x"}]}, r"history\[0\]: role must be one of user, assistant"),
    ({"history": [42]}, r"history\[0\]: expected a message"),
    ({"history": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     r"history\[0\]: a text part needs its 'text' as a string, got int"),
    ({"message": 5}, "message: content must be text or a list of text parts, got int"),
    ({"system_prompt": 5}, "system_prompt: expected text, got int"),
])
def test_bad_input_names_the_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        build(**overrides)


def test_good_input_keeps_values_and_defaults() -> None:
    request = build(top_k=40, repetition_penalty=1.1, max_new_tokens="128", temperature=0)
    assert (request.message, request.system_prompt, request.temperature, request.top_p) == ("hi", "be brief", 0.0, 0.95)
    assert (request.max_new_tokens, request.top_k, request.repetition_penalty) == (128, 40, 1.1)
    assert build().top_k == 0 and build().repetition_penalty == 1.0
    assert build(system_prompt=None).system_prompt is None  # None: the prompt format's default
    assert build(message="x" * MAX_MESSAGE_CHARS).message == "x" * MAX_MESSAGE_CHARS


def test_history_content_is_flattened_from_gradio_parts_and_pairs() -> None:
    api_shape = [
        {"role": "user", "metadata": None, "content": [{"type": "text", "text": "Hello"}], "options": None},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "metadata": {"title": "thinking"}, "content": "a UI thought bubble"},
        {"role": "user", "content": [{"type": "file", "file": {"path": "x.png"}}]},  # no text: skipped
        ["old pair", "format"],
        ["unanswered", None],
    ]
    assert parse_history(api_shape) == [
        ChatMessage("user", "Hello"), ChatMessage("assistant", "Hi\nthere"), ChatMessage("user", "old pair"),
        ChatMessage("assistant", "format"), ChatMessage("user", "unanswered")]
    assert flatten_content({"type": "text", "text": "x"}) == "x" and flatten_content(None) == ""
    assert parse_history(None) == [] and parse_history([]) == []


def test_huge_history_is_cut_from_the_oldest_turn_not_refused() -> None:
    turn = [{"role": "user", "content": "q" * 10_000}, {"role": "assistant", "content": "a" * 10_000}]
    request = build(history=turn * 15)  # 300,000 characters
    assert request.dropped_messages > 0
    assert sum(len(m.content) for m in request.history) <= MAX_HISTORY_CHARS
    assert request.history[0].role == "user" and len(request.history) == 30 - request.dropped_messages


def nested(depth: int, inner: Any = "deep") -> Any:
    for _ in range(depth):
        inner = [inner]
    return inner


SURROGATE = r"is not valid Unicode text \(a lone surrogate, U\+D800, at position "


@pytest.mark.parametrize(("overrides", "message"), [
    ({"message": "hi \ud800"}, rf"^message: {SURROGATE}3\)"),
    ({"message": [{"type": "text", "text": "\ud800"}]}, rf"^message: {SURROGATE}0\)"),
    ({"system_prompt": "be \ud800 brief"}, rf"^system_prompt: {SURROGATE}3\)"),
    ({"history": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "x\ud800"}]},
     rf"^history\[1\]: {SURROGATE}1\)"),
    ({"history": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
     rf"^history\[0\]: {SURROGATE}0\)"),
    ({"history": [["fine", "\ud800"]]}, rf"^history\[0\]: {SURROGATE}0\)"),
    ({"history": [{"role": "\ud800", "content": "x"}]},
     r"^history\[0\]: role must be one of user, assistant, got '\\ud800'"),
])
def test_lone_surrogates_are_refused_naming_the_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        build(**overrides)


@pytest.mark.parametrize("depth", [MAX_CONTENT_DEPTH + 1, 5_000, 100_000])
def test_deeply_nested_content_names_the_field_instead_of_recursing(depth: int) -> None:
    deep = nested(depth)
    too_deep = rf"content is nested too deeply \(lists within lists more than {MAX_CONTENT_DEPTH} levels\)"
    for overrides, field in [
        ({"history": [{"role": "user", "content": deep}]}, r"history\[0\]"),
        ({"history": [{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "text", "text": "b"},
                                                                                         deep]}]}, r"history\[1\]"),
        ({"history": [{"role": "user", "content": nested(depth, {"type": "text", "text": "x"})}]}, r"history\[0\]"),
        ({"history": [[deep, "reply"]]}, r"history\[0\]"),
        ({"message": deep}, "message"),
    ]:
        with pytest.raises(InputError, match=f"^{field}: {too_deep}"):
            build(**overrides)


def test_nesting_up_to_the_limit_is_flattened() -> None:
    assert flatten_content(nested(MAX_CONTENT_DEPTH)) == "deep"
    assert build(history=[{"role": "user", "content": nested(MAX_CONTENT_DEPTH, {"type": "text", "text": "q"})}],
                 ).history == (ChatMessage("user", "q"),)


@pytest.mark.parametrize("field", ["temperature", "top_p", "max_new_tokens", "top_k", "repetition_penalty"])
def test_numbers_too_large_for_a_float_name_the_field(field: str) -> None:
    with pytest.raises(InputError, match=rf"^{field}: must be between .*, got 100000000000… \(a 401-digit number\)$"):
        build(**{field: HUGE})
    with pytest.raises(InputError, match=rf"^{field}: must be between .*, got -100000000000…"):
        build(**{field: -HUGE})


def test_values_just_outside_the_range_are_shown_as_sent() -> None:
    with pytest.raises(InputError, match=r"^temperature: must be between 0 and 2, got 2\.0000001$"):
        build(temperature=2.0000001)
    with pytest.raises(InputError, match=r"^max_new_tokens: must be between 1 and 4096, got 4096\.0000001$"):
        build(max_new_tokens=4096.0000001)
