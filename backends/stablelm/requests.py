"""The validated chat request: ``/chat``'s inputs checked before any model is touched.

Imports no torch, so the Chat tab can validate cheaply. Every check raises ``InputError`` naming the
public field of DESIGN.md's ``/chat`` row (message, history, system_prompt, temperature, top_p,
max_new_tokens) or of the two extras (top_k, repetition_penalty), with the allowed range.

Decisions, documented in the README:
- ``max_new_tokens`` outside 1-4096 is an error, not a clamp: 4096 is the whole context window of
  every StableLM here, so a larger value can only be a mistake. Within the range, the backend may
  still shorten the reply to fit the context window, and says so in a notice.
- A message longer than ``MAX_MESSAGE_CHARS`` is an error: that is more text than the context
  window holds, so a cut would silently drop most of it. Shorter messages that still do not fit
  (with a long system prompt, or on a small model) are cut in the middle by the backend, with a
  notice.
- History is never an error for its length: turns beyond ``MAX_HISTORY_CHARS`` are dropped here,
  oldest first, and the backend drops more to fit the context window; both are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from backends.runtime.errors import InputError
from backends.runtime.requests import check_unicode, parse_float, parse_int

#: 4096 is the context window of StableLM 2 Zephyr, StableLM Zephyr 3B and Tuned Alpha.
MAX_NEW_TOKENS = 4096
#: About 5,000 tokens of English: more than a 4,096-token window can hold.
MAX_MESSAGE_CHARS = 20_000
MAX_SYSTEM_PROMPT_CHARS = 8_000
#: History beyond this is dropped before tokenising (10x a full context window of text), so a
#: client that resends a huge conversation costs milliseconds, not seconds of tokeniser time.
MAX_HISTORY_CHARS = 200_000
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 10_000
MAX_REPETITION_PENALTY = 2.0
ROLES = ("user", "assistant")
#: Gradio's own shape is one list deep (a list of parts); a few more levels cost nothing to accept.
MAX_CONTENT_DEPTH = 8


@dataclass(frozen=True)
class ChatMessage:
    """One message of the conversation, with plain-text content."""

    role: str  # "user" or "assistant"
    content: str


def flatten_content(content: Any, where: str = "history") -> str:
    """Plain text of a message's content.

    Gradio 6 hands Chatbot content back through the API as a list of parts
    (``[{"type": "text", "text": ...}]``, NOTES.md); files and other non-text parts are skipped,
    since the models here read text only. Lists may nest (a list of parts inside a list), but
    only ``MAX_CONTENT_DEPTH`` deep: JSON allows any depth, and a list nested thousands deep
    would otherwise end in ``RecursionError`` instead of an error naming ``where``.
    """
    return _flatten(content, where, 0)


def _flatten(content: Any, where: str, depth: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        if content.get("type", "text") == "text" and isinstance(content.get("text"), str):
            return content["text"]
        if content.get("type") == "text":  # a text part whose text is missing or not text
            raise InputError(where, f"a text part needs its 'text' as a string, got "
                                    f"{type(content.get('text')).__name__}")
        return ""  # a file, image or component part
    if isinstance(content, (list, tuple)):
        if depth >= MAX_CONTENT_DEPTH:
            raise InputError(where, f"content is nested too deeply (lists within lists more than "
                                    f"{MAX_CONTENT_DEPTH} levels); send text or a list of text parts")
        return "\n".join(text for part in content if (text := _flatten(part, where, depth + 1)))
    raise InputError(where, f"content must be text or a list of text parts, got {type(content).__name__}")


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def parse_history(value: Any) -> list[ChatMessage]:
    """Messages from Gradio's messages format (``[{"role", "content"}]``) or ``[user, bot]`` pairs.

    Empty messages are skipped, and so are Gradio "thought" bubbles (messages with a metadata
    title), which are UI annotations rather than conversation.
    """
    if value is None or value == "":
        return []
    if not isinstance(value, (list, tuple)):
        raise InputError("history", f"expected a list of messages, got {type(value).__name__}")
    messages: list[ChatMessage] = []
    for index, item in enumerate(value):
        where = f"history[{index}]"
        if isinstance(item, (list, tuple)):  # the old pairs format: [user, assistant]
            if len(item) != 2:
                raise InputError(where, "a pair must be [user message, assistant reply]")
            pairs: Iterable[tuple[str, Any]] = zip(ROLES, item)
        elif isinstance(item, dict) or hasattr(item, "role"):
            metadata = _field(item, "metadata") or {}
            if _field(metadata, "title"):
                continue
            role = _field(item, "role")
            if role == "system":
                raise InputError(where, "role 'system' is not allowed in history; pass it as system_prompt")
            if role not in ROLES:
                raise InputError(where, f"role must be one of {', '.join(ROLES)}, got {role!r}")
            pairs = [(role, _field(item, "content"))]
        else:
            raise InputError(where, f"expected a message like {{'role': 'user', 'content': 'text'}}, "
                                    f"got {type(item).__name__}")
        for role, content in pairs:
            text = check_unicode(where, flatten_content(content, where))
            if text.strip():
                messages.append(ChatMessage(role, text))
    return messages


def _cap_history(messages: list[ChatMessage]) -> tuple[list[ChatMessage], int]:
    """Keep the newest messages within ``MAX_HISTORY_CHARS``, starting at a user message."""
    total, start = 0, len(messages)
    for index in range(len(messages) - 1, -1, -1):
        total += len(messages[index].content)
        if total > MAX_HISTORY_CHARS:
            break
        start = index
    while start < len(messages) and messages[start].role != "user":
        start += 1
    return messages[start:], start


@dataclass(frozen=True)
class ChatRequest:
    """One chat turn, validated. The backend fits it to the model's context window."""

    message: str
    history: tuple[ChatMessage, ...]
    #: None means the prompt format's default; "" means no system prompt.
    system_prompt: str | None
    #: 0 is greedy decoding.
    temperature: float
    top_p: float
    max_new_tokens: int
    #: 0 turns top-k filtering off.
    top_k: int = 0
    #: 1.0 turns the penalty off.
    repetition_penalty: float = 1.0
    #: Sampling seed; None draws a fresh one. Not part of ``/chat``; the OpenAI route and tests use it.
    seed: int | None = None
    #: Text that ends the reply where it first appears, itself left out (OpenAI's ``stop``).
    stop: tuple[str, ...] = ()
    #: Oldest history messages dropped here for ``MAX_HISTORY_CHARS`` (reported by the backend).
    dropped_messages: int = 0

    @classmethod
    def build(cls, message: Any, history: Any, system_prompt: Any, temperature: Any, top_p: Any,
              max_new_tokens: Any, top_k: Any = 0, repetition_penalty: Any = 1.0,
              seed: int | None = None, stop: tuple[str, ...] = ()) -> "ChatRequest":
        """Validate raw inputs, in ``/chat``'s order, into a request.

        Raises:
            InputError: naming the field and the allowed values.
        """
        if message is None:
            message = ""
        if not isinstance(message, str):
            message = flatten_content(message, "message")
        check_unicode("message", message)
        if not message.strip():
            raise InputError("message", "is empty; type what you want to say")
        if len(message) > MAX_MESSAGE_CHARS:
            raise InputError("message", f"is {len(message):,} characters; the limit is {MAX_MESSAGE_CHARS:,} "
                                        "(about 5,000 tokens, more than the model's 4,096-token context window)")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise InputError("system_prompt", f"expected text, got {type(system_prompt).__name__}")
        if system_prompt is not None and len(system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
            raise InputError("system_prompt", f"is {len(system_prompt):,} characters; the limit is "
                                              f"{MAX_SYSTEM_PROMPT_CHARS:,}")
        if system_prompt is not None:
            check_unicode("system_prompt", system_prompt)
        top_p_value = parse_float("top_p", top_p, 0.0, 1.0)
        if top_p_value <= 0.0:
            raise InputError("top_p", f"must be greater than 0 and at most 1, got {top_p_value:g}")
        if not isinstance(stop, tuple) or not all(isinstance(text, str) and text for text in stop):
            raise InputError("stop", "must be a list of non-empty strings")
        messages, dropped = _cap_history(parse_history(history))
        return cls(
            message=message,
            history=tuple(messages),
            system_prompt=system_prompt,
            temperature=parse_float("temperature", temperature, 0.0, MAX_TEMPERATURE),
            top_p=top_p_value,
            max_new_tokens=parse_int("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS),
            top_k=parse_int("top_k", top_k, 0, MAX_TOP_K),
            repetition_penalty=parse_float("repetition_penalty", repetition_penalty, 1.0,
                                           MAX_REPETITION_PENALTY),
            seed=seed,
            stop=tuple(stop),
            dropped_messages=dropped,
        )
