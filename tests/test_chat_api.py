"""``/chat`` from outside: the real app in-process (tiny preset), driven through gradio_client."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from gradio_client import Client
from gradio_client.utils import Status

from tests.serving import serve_tiny

SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Any]]:
    """The app as ``app.launch`` builds it, plus its Studio, so tests can look at the manager."""
    with serve_tiny(models_dir, tmp_path_factory.mktemp("outputs"), "--tabs", "chat,system") as (studio, url):
        yield Client(url, verbose=False), studio


def model_in_use(studio: Any) -> int:
    return studio.manager.component("stablelm.model").in_use


def test_chat_streams_several_partial_replies_before_the_final_one(served: tuple[Client, Any]) -> None:
    client, _ = served
    # Long enough that decoding (in its own thread) outlasts several 30 ms update intervals.
    job = client.submit("Write a poem about the sea", [], SYSTEM, 0, 1.0, 600, api_name="/chat")
    updates = list(job)
    final = job.result()
    assert final and len(updates) >= 3
    assert updates[-1] == final
    assert all(later.startswith(earlier) for earlier, later in zip(updates, updates[1:]))  # growing text
    again = client.predict("Write a poem about the sea", [], SYSTEM, 0, 1.0, 600, api_name="/chat")
    assert again == final  # greedy is deterministic


def test_the_six_contract_inputs_are_the_whole_api(served: tuple[Client, Any]) -> None:
    client, _ = served
    names = [p["parameter_name"] for p in client.view_api(print_info=False, return_format="dict")
             ["named_endpoints"]["/chat"]["parameters"]]
    assert names == ["message", "history", "system_prompt", "temperature", "top_p", "max_new_tokens"]
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    greedy = client.predict("And now?", history, SYSTEM, 0, 1.0, 8, api_name="/chat")
    assert isinstance(greedy, str) and greedy
    # Raw HTTP with exactly the six values (no gradio_client to fill anything in) gets the same reply.
    with httpx.Client(base_url=client.src, timeout=60) as http:
        event = http.post("gradio_api/call/chat", json={"data": ["And now?", history, SYSTEM, 0, 1.0, 8]})
        assert event.status_code == 200, event.text
        stream = http.get(f"gradio_api/call/chat/{event.json()['event_id']}").text
    assert "event: complete" in stream, stream[-500:]
    final = [line for line in stream.splitlines() if line.startswith("data:")][-1]
    assert json.loads(final[len("data:"):]) == [greedy]
    assert isinstance(client.predict(message="hi", api_name="/chat"), str)  # every other input defaults
    gradio_parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}]
    assert isinstance(client.predict("And now?", gradio_parts, "", 0, 1.0, 8, api_name="/chat"), str)


def test_history_longer_than_the_context_window_is_trimmed_not_refused(served: tuple[Client, Any]) -> None:
    client, studio = served
    history = []
    for turn in range(60):
        history += [{"role": "user", "content": f"question {turn} " + "word " * 20},
                    {"role": "assistant", "content": f"answer {turn} " + "word " * 20}]
    reply = client.predict("the newest question", history, SYSTEM, 0, 1.0, 16, api_name="/chat")
    assert isinstance(reply, str)
    backend = studio.registry.backend("stablelm")
    fitted = backend.prompt(backend_request(history))
    assert fitted.dropped_messages > 0 and fitted.text.startswith(f"<|system|>\n{SYSTEM}")


def backend_request(history: list[dict[str, str]]) -> Any:
    from backends.stablelm.requests import ChatRequest

    return ChatRequest.build("the newest question", history, SYSTEM, 0, 1.0, 16)


def test_stop_ends_the_stream_and_leaves_the_model_idle(served: tuple[Client, Any]) -> None:
    client, studio = served
    job = client.submit("Tell me a long story", [], SYSTEM, 0, 1.0, 900, api_name="/chat")
    for count, _ in enumerate(job, start=1):
        if count == 3:
            job.cancel()
            break
    deadline = time.monotonic() + 10
    while (model_in_use(studio) or not job.done()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.status().code == Status.CANCELLED
    assert len(job.outputs()) < 900  # the reply did not run to its end
    assert model_in_use(studio) == 0
    status = client.predict(api_name="/status")
    assert {m["name"]: m["placement"] for m in status["models"]}["stablelm.model"] == "gpu"
    assert client.predict("still there?", [], SYSTEM, 0, 1.0, 8, api_name="/chat") is not None
