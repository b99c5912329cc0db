"""The OpenAI chat-completions shape: requests checked and turned into chat inputs, replies shaped.

``/v1/chat/completions`` (``tabs/openai_routes.py``) reads a request with ``parse``, runs it on
the GPU queue through ``register``'s event, and answers with ``completion`` or a stream of
``chunk``s. The field names and error bodies are OpenAI's, so its clients (the ``openai``
package, chat front ends) work unchanged:

- ``messages`` with ``system`` (or ``developer``), ``user`` and ``assistant`` roles; the last one is
  the user's. System messages become the system prompt; none means the model's default.
- ``temperature``, ``top_p``, ``max_tokens`` (or ``max_completion_tokens``), ``stop`` and ``seed``;
  a field left out takes the preset's chat default, as the Chat tab's API does.
- Other fields are ignored, as OpenAI's clients expect of compatible servers. ``n`` above 1 is
  refused: one reply at a time is what the GPU queue gives.
- A bad value gets ``{"error": {"message", "type", "param", "code"}}`` naming the field.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

from backends.runtime.errors import InputError
from backends.runtime.studio import Studio
from backends.stablelm.requests import MAX_NEW_TOKENS, ChatRequest, flatten_content
from tabs.common import GPU_QUEUE, on_gpu, user_errors

#: The hidden event the routes queue a completion on (callable, never listed in the API page).
API_NAME = "openai_chat"
#: OpenAI's own limit on ``stop``.
MAX_STOPS = 4
SEED_RANGE = (0, 2**63 - 1)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
#: Our chat fields by the OpenAI name a client knows them by.
PARAMS = {"message": "messages", "history": "messages", "system_prompt": "messages", "temperature": "temperature",
          "top_p": "top_p", "max_new_tokens": "max_tokens", "seed": "seed", "stop": "stop"}
#: The id a job's Stop flag is kept under: not a gradio session hash, so it meets no tab's.
JOB_ID = re.compile(r"openai-[0-9a-f]{32}")


class OpenAIError(Exception):
    """A refused request, with the body and status OpenAI would answer."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.status, self.kind, self.code = param, status, kind, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Completion:
    """One checked request: the chat inputs in ``/chat``'s order, and how to answer."""

    inputs: list[Any]
    model: str
    stream: bool
    include_usage: bool
    job: str


def served_model(studio: Studio) -> str:
    """The id ``/v1/models`` lists: the preset's chat model (its hub repo, or its local path)."""
    return str(studio.preset.settings.stablelm.model.repo)


def parse(body: Any, studio: Studio) -> Completion:
    """Check an OpenAI chat-completions body; the result can go on the queue as it is.

    Raises:
        OpenAIError: naming the field (``param``), as OpenAI's own refusals do.
    """
    if not isinstance(body, dict):
        raise OpenAIError("The request body must be a JSON object with 'model' and 'messages'.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError("'model' is required: the id /v1/models lists.", "model")
    if model != served_model(studio):
        raise OpenAIError(f"The model {model[:100]!r} does not exist here; this server has "
                          f"{served_model(studio)!r} (see /v1/models).", "model", 404, code="model_not_found")
    system, history, message = _messages(body.get("messages"))
    defaults = studio.preset.settings.stablelm.defaults
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise OpenAIError(f"'n' must be 1 here (one reply per request), got {n!r}.", "n")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise OpenAIError(f"'stream' must be true or false, got {stream!r}.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise OpenAIError("'stream_options' must be an object like {\"include_usage\": true}.", "stream_options")
    tokens_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    inputs = [message, history, system,
              _number(body, "temperature", defaults.temperature),
              _number(body, "top_p", defaults.top_p),
              _count(body, tokens_field, defaults.max_new_tokens),
              defaults.top_k, defaults.repetition_penalty, _seed(body.get("seed")), _stops(body.get("stop"))]
    try:  # the chat tab's own checks, so that the queued job cannot fail on its inputs
        ChatRequest.build(*inputs)
    except InputError as error:
        param = tokens_field if error.field == "max_new_tokens" else PARAMS.get(error.field, error.field)
        raise OpenAIError(f"{param}: {error.detail}", param) from error
    return Completion(inputs, model, bool(stream), bool(options.get("include_usage")), f"openai-{uuid.uuid4().hex}")


def _messages(value: Any) -> tuple[str | None, list[dict[str, str]], str]:
    """(system prompt or None, history, the last user message) from OpenAI's ``messages``."""
    if not isinstance(value, list) or not value:
        raise OpenAIError("'messages' must be a non-empty list of {\"role\", \"content\"} objects.", "messages")
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for index, item in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise OpenAIError(f"{where} must be an object with 'role' and 'content'.", "messages")
        role = ROLES.get(item.get("role")) if isinstance(item.get("role"), str) else None
        if role is None:
            raise OpenAIError(f"{where}.role must be one of {', '.join(ROLES)}; got {item.get('role')!r}.",
                              "messages")
        try:
            content = flatten_content(item.get("content") or "", f"{where}.content")
        except InputError as error:
            raise OpenAIError(f"{error.field}: {error.detail}", "messages") from error
        if role == "system":
            system.append(content)
        else:
            turns.append({"role": role, "content": content})
    if not turns or turns[-1]["role"] != "user":
        raise OpenAIError("The last message (besides system ones) must be the user's: it is what gets a reply.",
                          "messages")
    return ("\n\n".join(system) if system else None), turns[:-1], turns[-1]["content"]


def _number(body: dict[str, Any], name: str, default: float) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OpenAIError(f"'{name}' must be a number, got {value!r}.", name)
    return value


def _count(body: dict[str, Any], name: str, default: int) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not int or not 1 <= value <= MAX_NEW_TOKENS:
        raise OpenAIError(f"'{name}' must be a whole number from 1 to {MAX_NEW_TOKENS} (the model's context "
                          f"window), got {value!r}.", name)
    return value


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise OpenAIError(f"'seed' must be a whole number from 0 to 2^63-1, got {value!r}.", "seed")
    return value


def _stops(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if value is None:
        return ()
    if (not isinstance(stops, list) or len(stops) > MAX_STOPS
            or not all(isinstance(stop, str) and stop for stop in stops)):
        raise OpenAIError(f"'stop' must be a string or a list of up to {MAX_STOPS} non-empty strings.", "stop")
    return tuple(stops)


# ----- answers ---------------------------------------------------------------------------------
def finish_reason(stats: dict[str, Any] | None) -> str:
    """OpenAI's ``finish_reason``: "length" when ``max_tokens`` ran out, else "stop"."""
    return "length" if stats is not None and stats.get("stop_reason") == "length" else "stop"


def usage(stats: dict[str, Any] | None) -> dict[str, int] | None:
    if stats is None:
        return None
    prompt, reply = int(stats.get("prompt_tokens", 0)), int(stats.get("tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": reply, "total_tokens": prompt + reply}


def completion(request: Completion, text: str, stats: dict[str, Any] | None) -> dict[str, Any]:
    """The non-streamed answer (``chat.completion``)."""
    return {"id": f"chatcmpl-{request.job[7:]}", "object": "chat.completion", "created": int(time.time()),
            "model": request.model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish_reason(stats)}],
            "usage": usage(stats)}


def chunk(request: Completion, delta: dict[str, str], finish: str | None = None,
          usage_of: dict[str, Any] | None = None, choices: bool = True) -> dict[str, Any]:
    """One streamed piece (``chat.completion.chunk``); the usage chunk has no choices."""
    body: dict[str, Any] = {"id": f"chatcmpl-{request.job[7:]}", "object": "chat.completion.chunk",
                            "created": int(time.time()), "model": request.model, "system_fingerprint": None,
                            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
                            if choices else []}
    if usage_of is not None or not choices:
        body["usage"] = usage(usage_of)
    return body


# ----- the queued job --------------------------------------------------------------------------
def register(studio: Studio) -> None:
    """The hidden ``/openai_chat`` event: one completion on the GPU queue, as the Chat tab's are.

    It takes ``{"job": id, "inputs": [...]}`` from ``parse`` and yields ``{"text", "stats"}``:
    the reply so far, then the stats on the last update. The Stop flag is kept under ``job``, so
    the routes stop the reply when their client goes away.
    """
    from tabs.chat import gpu_seconds, guarded, stream_reply

    def openai_chat(payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        job, inputs = _payload(payload)
        for reply in guarded("Chat", stream_reply(studio, job, inputs)):
            yield {"text": reply.text, "stats": reply.stats}

    def seconds(payload: Any, *_: Any) -> int:
        inputs = payload.get("inputs") if isinstance(payload, dict) else None
        return gpu_seconds(*inputs[:6]) if isinstance(inputs, list) and len(inputs) >= 6 else 30

    with gr.Group(visible=False):
        request_box, reply_box = gr.JSON(label="completion"), gr.JSON(label="reply")
        trigger = gr.Button("openai chat")
    trigger.click(on_gpu(openai_chat, seconds), request_box, reply_box, api_name=API_NAME,
                  api_visibility="undocumented", **GPU_QUEUE)


def _payload(payload: Any) -> tuple[str, list[Any]]:
    def check() -> tuple[str, list[Any]]:
        job = payload.get("job") if isinstance(payload, dict) else None
        inputs = payload.get("inputs") if isinstance(payload, dict) else None
        if not isinstance(job, str) or JOB_ID.fullmatch(job) is None:
            raise InputError("completion", "needs a 'job' id from /v1/chat/completions; call that route instead")
        if not isinstance(inputs, list) or len(inputs) != 10:
            raise InputError("completion", "needs the ten chat inputs /v1/chat/completions sends")
        stop = inputs[9]
        return job, [*inputs[:9], tuple(stop) if isinstance(stop, list) else ()]

    return user_errors("Chat", check)
