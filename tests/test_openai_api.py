"""``/v1/models`` and ``/v1/chat/completions`` from outside, with the ``openai`` client (tiny preset, a login)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest
from gradio_client import Client

from tests.serving import serve_tiny

SYSTEM = "You are a helpful assistant."
LOGIN = ("tester", "secret-pass")


class Served:
    def __init__(self, studio: Any, url: str) -> None:
        self.studio, self.url = studio, url.rstrip("/")
        self.api = openai.OpenAI(base_url=f"{self.url}/v1", api_key=":".join(LOGIN), max_retries=0, timeout=120)
        self.model = self.api.models.list().data[0].id

    def ask(self, text: str, **fields: Any) -> Any:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
        return self.api.chat.completions.create(model=self.model, messages=messages, **fields)


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    outputs = tmp_path_factory.mktemp("outputs")
    with serve_tiny(models_dir, outputs, "--tabs", "chat,system", "--auth", ":".join(LOGIN)) as (studio, url):
        yield Served(studio, url)


def test_models_lists_the_presets_chat_model(served: Served) -> None:
    listed = served.api.models.list().data
    assert [(m.id, m.object) for m in listed] == [("tiny:stablelm", "model")]


def test_a_streamed_and_a_plain_reply_are_the_same_greedy_text(served: Served) -> None:
    plain = served.ask("Tell me about the sea", temperature=0, max_tokens=40)
    text = plain.choices[0].message.content
    assert text and plain.choices[0].message.role == "assistant"
    assert plain.choices[0].finish_reason in ("stop", "length")
    assert plain.usage.completion_tokens <= 40 and plain.usage.prompt_tokens > 0
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens
    pieces = list(served.ask("Tell me about the sea", temperature=0, max_tokens=40, stream=True,
                             stream_options={"include_usage": True}))
    deltas = [p.choices[0].delta.content or "" for p in pieces if p.choices]
    assert sum(1 for d in deltas if d) >= 2  # it streamed, not one piece at the end
    assert "".join(deltas) == text
    finishes = [p.choices[0].finish_reason for p in pieces if p.choices and p.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert pieces[-1].choices == [] and pieces[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_greedy_matches_the_chat_tabs_reply_and_a_seed_repeats_a_sampled_one(served: Served) -> None:
    tab = Client(served.url, auth=LOGIN, verbose=False)
    greedy = tab.predict("What is a cat?", [], SYSTEM, 0, 1.0, 32, api_name="/chat")
    ours = served.ask("What is a cat?", temperature=0, top_p=1.0, max_tokens=32, seed=7)
    assert ours.choices[0].message.content == greedy
    sampled = [served.ask("What is a cat?", temperature=1.2, max_tokens=32, seed=seed).choices[0].message.content
               for seed in (11, 11, 12, 13)]
    assert sampled[0] == sampled[1]
    assert len(set(sampled)) > 1  # seeds do change a sampled reply


def test_a_stop_string_ends_the_reply_before_it(served: Served) -> None:
    full = served.ask("Write a poem", temperature=0, max_tokens=60).choices[0].message.content
    assert len(full) > 20
    stop = full[10:14]
    cut = full[:full.index(stop)]
    stopped = served.ask("Write a poem", temperature=0, max_tokens=60, stop=[stop, "never-in-the-text"])
    assert stopped.choices[0].message.content == cut
    assert stopped.choices[0].finish_reason == "stop"
    streamed = served.ask("Write a poem", temperature=0, max_tokens=60, stop=stop, stream=True)
    assert "".join(p.choices[0].delta.content or "" for p in streamed if p.choices) == cut


def test_unknown_fields_are_ignored_and_developer_is_a_system_role(served: Served) -> None:
    reply = served.api.chat.completions.create(
        model=served.model, max_tokens=8, temperature=0,
        messages=[{"role": "developer", "content": SYSTEM}, {"role": "user", "content": [{"type": "text",
                                                                                        "text": "hi"}]}],
        frequency_penalty=0.5, presence_penalty=0.1, user="someone", extra_body={"not_a_field": {"x": 1}})
    assert reply.choices[0].message.content == served.ask("hi", temperature=0, max_tokens=8).choices[0].message.content


@pytest.mark.parametrize("fields, param, words", [
    ({"max_tokens": 0}, "max_tokens", "from 1 to 4096"),
    ({"max_tokens": 5000}, "max_tokens", "from 1 to 4096"),
    ({"max_tokens": "ten"}, "max_tokens", "whole number"),
    ({"max_completion_tokens": -3}, "max_completion_tokens", "from 1 to 4096"),
    ({"temperature": 3}, "temperature", "temperature"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"seed": -1}, "seed", "0 to 2^63-1"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "up to 4"),
    ({"n": 2}, "n", "must be 1"),
])
def test_bad_values_are_refused_naming_the_field(served: Served, fields: dict[str, Any], param: str,
                                                 words: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        served.ask("hi", **fields)
    assert refused.value.status_code == 400 and refused.value.param == param
    assert words in refused.value.message


def test_bad_messages_and_an_unknown_model_are_refused(served: Served) -> None:
    create = served.api.chat.completions.create
    for messages, words in [([], "non-empty list"),
                            ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                             "must be the user's"),
                            ([{"role": "tool", "content": "x"}], "messages[0].role"),
                            ([{"role": "user", "content": "   "}], "is empty")]:
        with pytest.raises(openai.BadRequestError) as refused:
            create(model=served.model, messages=messages)
        assert refused.value.param == "messages" and words in refused.value.message, refused.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.param == "model" and "tiny:stablelm" in missing.value.message


def test_without_the_login_both_routes_are_refused(served: Served) -> None:
    for key in ("", "tester:wrong", "no-colon"):
        stranger = openai.OpenAI(base_url=f"{served.url}/v1", api_key=key or "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            stranger.models.list()
        assert "Bearer USER:PASS" in refused.value.message
        with pytest.raises(openai.AuthenticationError):
            stranger.chat.completions.create(model=served.model, messages=[{"role": "user", "content": "hi"}])
    with httpx.Client(timeout=30) as http:  # no Authorization header at all
        assert http.get(f"{served.url}/v1/models").status_code == 401
        basic = http.get(f"{served.url}/v1/models", auth=LOGIN)  # HTTP Basic is a login too
        assert basic.status_code == 200 and basic.json()["data"][0]["id"] == served.model


def count_pieces(served: Served, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Count the pieces every reply generates, and flag ``ended`` when its stream ends."""
    registry = served.studio.registry
    real_stream, seen = registry.stream, {"chunks": 0, "ended": threading.Event()}

    def counting(family: str, request: Any, progress: Any) -> Iterator[Any]:
        try:
            for chunk in real_stream(family, request, progress):
                seen["chunks"] += 1
                yield chunk
        finally:
            seen["ended"].set()

    monkeypatch.setattr(registry, "stream", counting)
    return seen


def test_a_dropped_stream_ends_the_generation(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = count_pieces(served, monkeypatch)
    # The whole reply first (greedy, so the dropped one would be the same): as long as the tiny
    # model's 1,024-token window allows.
    full = served.ask("Tell me a very long story", temperature=0, max_tokens=4000)
    whole, seen["chunks"] = seen["chunks"], 0
    assert full.usage.completion_tokens > 500 and whole > 100
    seen["ended"].clear()
    stream = served.ask("Tell me a very long story", temperature=0, max_tokens=4000, stream=True)
    for count, _ in enumerate(stream, start=1):
        if count == 3:
            stream.close()  # the connection goes away mid-reply
            break
    assert seen["ended"].wait(15), "the reply ran on after its client went away"
    assert seen["chunks"] < whole / 2, f"{seen['chunks']} of the whole reply's {whole} pieces were generated"
    deadline = time.monotonic() + 10
    while any(s.startswith("openai-") for s in served.studio.running_sessions()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(s.startswith("openai-") for s in served.studio.running_sessions())
    assert served.ask("still there?", temperature=0, max_tokens=4).choices[0].message.content is not None


def test_a_client_that_gives_up_on_a_plain_reply_stops_it(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = count_pieces(served, monkeypatch)
    served.ask("Tell me a very long story", temperature=0, max_tokens=4000)
    whole, seen["chunks"] = seen["chunks"], 0
    seen["ended"].clear()
    body = {"model": served.model, "max_tokens": 4000, "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": "Tell me a very long story"}]}
    with pytest.raises(httpx.ReadTimeout):  # the client stops waiting after a moment
        httpx.post(f"{served.url}/v1/chat/completions", json=body, auth=LOGIN, timeout=httpx.Timeout(60, read=0.3))
    assert seen["ended"].wait(15), "the reply ran on after its client went away"
    assert seen["chunks"] < whole, f"{seen['chunks']} of the whole reply's {whole} pieces were generated"


def test_a_request_dropped_while_it_waits_in_the_queue_never_runs(served: Served,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    registry = served.studio.registry
    real_stream, started = registry.stream, []

    def counting(family: str, request: Any, progress: Any) -> Iterator[Any]:
        started.append(request.message)
        for chunk in real_stream(family, request, progress):
            if request.message == "a slow story":  # holds the GPU queue for seconds, however fast the CPU
                time.sleep(0.02)
            yield chunk

    monkeypatch.setattr(registry, "stream", counting)
    tab = Client(served.url, auth=LOGIN, verbose=False)
    busy = tab.submit("a slow story", [], SYSTEM, 0, 1.0, 4000, api_name="/chat")
    deadline = time.monotonic() + 30
    while not started and time.monotonic() < deadline:  # the GPU queue's one slot is taken
        time.sleep(0.02)
    body = {"model": served.model, "max_tokens": 8, "messages": [{"role": "user", "content": "waiting my turn"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{served.url}/v1/chat/completions", json=body, auth=LOGIN, timeout=httpx.Timeout(60, read=0.5))
    time.sleep(1)  # the route notices the client is gone and takes the request off the queue
    assert not busy.done(), "the slow story ended before the test could drop the waiting request"
    busy.cancel()
    assert served.ask("after", temperature=0, max_tokens=4).choices[0].message.content is not None
    assert started[0] == "a slow story" and "waiting my turn" not in started, started
