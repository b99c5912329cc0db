"""Raw HTTP calls that leave out inputs are answered with the endpoint's input names, in order.

gradio 6.31 runs such a call and reports ``{"error": null}``; ``tabs/web_guard.ApiInputCheck``
answers it first, with 422 and the names of DESIGN.md's API table. Complete calls, and the
browser's calls by ``fn_index``, pass as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.serving import serve_tiny

#: DESIGN.md's API table: each endpoint's inputs, in order.
INPUTS = {
    "generate_image": ["prompt", "negative_prompt", "width", "height", "prior_steps", "decoder_steps",
                       "prior_guidance", "decoder_guidance", "num_images", "seed"],
    "chat": ["message", "history", "system_prompt", "temperature", "top_p", "max_new_tokens"],
    "unload": ["name"],
}


@pytest.fixture(scope="module")
def http(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with serve_tiny(models_dir, tmp_path_factory.mktemp("raw-api-outputs")) as (_, url):
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


def refusal(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    return response.json()["error"]


@pytest.mark.parametrize("endpoint", sorted(INPUTS))
@pytest.mark.parametrize("route", ["call", "run"])
def test_a_call_with_no_inputs_names_all_of_them_in_order(http: httpx.Client, endpoint: str, route: str,
                                                          tally: Any) -> None:
    message = refusal(http.post(f"gradio_api/{route}/{endpoint}", json={"data": []}))
    names = INPUTS[endpoint]
    assert f"/{endpoint} takes {len(names)} input" in message
    assert f"in this order: {', '.join(names)};" in message
    assert f"this call sent 0, so {', '.join(names)} {'is' if len(names) == 1 else 'are'} missing" in message
    tally.add("bad_inputs", f"raw missing inputs /{endpoint}", tried=1, answered=1)


@pytest.mark.parametrize(("endpoint", "sent"), [("generate_image", ["a cat"]),
                                                ("generate_image", ["a cat", "", 256, 256, 2, 2, 4.0, 0.0, 1]),
                                                ("chat", ["hi"]), ("chat", ["hi", [], ""])])
def test_a_short_call_names_the_missing_inputs(http: httpx.Client, endpoint: str, sent: list[Any]) -> None:
    message = refusal(http.post(f"gradio_api/call/{endpoint}", json={"data": sent}))
    missing = INPUTS[endpoint][len(sent):]
    assert f"this call sent {len(sent)}, so {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing" \
        in message, message
    assert "null" not in message


def test_call_v2_names_a_required_input_left_out_and_an_unknown_one(http: httpx.Client) -> None:
    message = refusal(http.post("gradio_api/call/v2/generate_image", json={"width": 256}))
    assert "prompt has no default and must be given" in message
    message = refusal(http.post("gradio_api/call/v2/generate_image", json={"promt": "a cat"}))
    assert "promt is not among them" in message and "prompt, negative_prompt" in message
    message = refusal(http.post("gradio_api/call/v2/unload", json={}))
    assert "/unload takes 1 input, in this order: name; name has no default" in message


def events(http: httpx.Client, endpoint: str, data: list[Any]) -> str:
    response = http.post(f"gradio_api/call/{endpoint}", json={"data": data})
    assert response.status_code == 200, response.text
    return http.get(f"gradio_api/call/{endpoint}/{response.json()['event_id']}").text


def test_complete_calls_and_calls_without_inputs_still_run(http: httpx.Client) -> None:
    stream = events(http, "unload", ["all"])
    assert "event: complete" in stream, stream
    status = json.loads(stream.split("event: complete", 1)[1].split("data:", 1)[1].split("\n", 1)[0])[0]
    assert "models" in status
    assert "event: complete" in events(http, "status", [])
    # Too many values is gradio's own business (it ignores the extras); the check only adds names.
    assert "event: complete" in events(http, "unload", ["all", "extra"])


def test_calls_the_check_does_not_own_pass_to_gradio(http: httpx.Client) -> None:
    """An unknown endpoint, a body that is not JSON, and a call by ``fn_index`` get gradio's answers."""
    # gradio 6.31 answers an unknown name with a 500 and drops the connection: a fresh one, then.
    unknown = httpx.post(f"{http.base_url}gradio_api/call/no_such_endpoint", json={"data": []}, timeout=60)
    assert unknown.status_code == 500
    assert http.post("gradio_api/call/unload", content=b"{not json",
                     headers={"content-type": "application/json"}).status_code == 422  # FastAPI's own
    assert "error" not in http.post("gradio_api/call/unload", content=b"{not json",
                                    headers={"content-type": "application/json"}).json()
    config = http.get("config").json()
    unload = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "unload")
    by_index = http.post("gradio_api/queue/join", json={"data": ["all"], "fn_index": unload, "session_hash": "abc"})
    assert by_index.status_code == 200 and "event_id" in by_index.json()
