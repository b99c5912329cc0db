"""``/chat`` from outside: the real app in-process (tiny preset), driven through gradio_client."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from gradio_client import Client
from gradio_client.utils import Status

import app

SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Any]]:
    """The app as ``app.launch`` builds it, plus its Studio, so tests can look at the manager."""
    args = app.parse_args(["--preset", "tiny", "--models-dir", str(models_dir), "--outputs",
                           str(tmp_path_factory.mktemp("outputs")), "--tabs", "chat,system"], environ={})
    studio = app.build_studio(args)
    demo = app.build_ui(studio, args.tabs)
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    yield Client(url, verbose=False), studio
    demo.close()


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


def test_six_contract_inputs_suffice_and_extras_are_optional(served: tuple[Client, Any]) -> None:
    client, _ = served
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert isinstance(client.predict("And now?", history, SYSTEM, 0.7, 0.9, 8, api_name="/chat"), str)
    assert isinstance(client.predict("And now?", history, SYSTEM, 0.7, 0.9, 8, 20, 1.1, api_name="/chat"), str)
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
    from backends.chat_requests import ChatRequest

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


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"message": ""}, "message: is empty"),
        ({"max_new_tokens": 0}, "max_new_tokens: must be between 1 and 4096, got 0"),
        ({"max_new_tokens": 100_000}, "max_new_tokens: must be between 1 and 4096, got 100000"),
        ({"temperature": -1}, "temperature: must be between 0 and 2, got -1"),
        ({"message": "x" * 50_000}, "message: is 50,000 characters; the limit is 20,000"),
        ({"history": [{"role": "system", "content": "x"}]}, r"history\[0\]: role 'system'"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_app_keeps_serving(served: tuple[Client, Any],
                                                              overrides: dict[str, Any], message: str) -> None:
    client, studio = served
    values = dict(message="hi", history=[], system_prompt=SYSTEM, temperature=0.7, top_p=0.95, max_new_tokens=8)
    values.update(overrides)
    with pytest.raises(Exception, match=message):
        client.predict(*values.values(), api_name="/chat")
    assert client.predict(api_name="/status")["preset"] == "tiny"
    assert model_in_use(studio) == 0
