"""StableLM prompt formats and fitting a conversation into the context window.

Two formats (``StableLMSettings.prompt_format``):
- ``chat_template``: the tokenizer's own Jinja template (StableLM Zephyr models ship one), so the
  prompt is exactly what the model was tuned on.
- ``tuned_alpha``: StableLM Tuned Alpha ships no template; its README gives
  ``<|SYSTEM|>{system}<|USER|>{message}<|ASSISTANT|>`` with no separators between turns and five
  stop tokens (hf_repos.md). ``render_tuned_alpha`` writes that.

``fit_prompt`` makes any conversation fit: it drops the oldest turns first (never the system prompt
or the newest message), then shortens the reply budget, then cuts the middle of the newest message,
and reports each step as a notice instead of failing. No torch here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from backends.runtime.errors import StudioError
from backends.stablelm.requests import ChatMessage

logger = logging.getLogger(__name__)

FORMATS = ("chat_template", "tuned_alpha")

#: The official system prompt of StableLM Tuned Alpha (Stability-AI/StableLM README); it ends
#: with a newline, and the first ``<|USER|>`` follows directly.
TUNED_ALPHA_SYSTEM_PROMPT = (
    "# StableLM Tuned (Alpha version)\n"
    "- StableLM is a helpful and harmless open-source AI language model developed by StabilityAI.\n"
    "- StableLM is excited to be able to help the user, but will refuse to do anything that could be "
    "considered harmful to the user.\n"
    "- StableLM is more than just an information source, StableLM is also able to write poetry, short "
    "stories, and make jokes.\n"
    "- StableLM will refuse to participate in anything that could harm a human.\n"
)
#: Token ids 50278, 50279, 50277, 1, 0 of the README's ``StopOnTokens``, by name, so the ids come
#: from whichever tokenizer is loaded.
TUNED_ALPHA_STOP_TOKENS = ("<|USER|>", "<|ASSISTANT|>", "<|SYSTEM|>", "<|padding|>", "<|endoftext|>")
DEFAULT_SYSTEM_PROMPTS = {"chat_template": "You are a helpful assistant.",
                          "tuned_alpha": TUNED_ALPHA_SYSTEM_PROMPT}

#: The reply budget is shortened at most down to this share of the window before the message is
#: cut: a long answer matters less than the question it answers.
MIN_REPLY_SHARE = 4
#: What replaces the middle of a message or system prompt that had to be cut.
CUT_MARK = "\n[…]\n"


def default_system_prompt(prompt_format: str, configured: str | None) -> str:
    """The system prompt a chat starts with: the preset's, else the format's own default."""
    return DEFAULT_SYSTEM_PROMPTS[prompt_format] if configured is None else configured


def render_tuned_alpha(system: str, messages: Sequence[ChatMessage]) -> str:
    """StableLM Tuned Alpha's prompt, ending with ``<|ASSISTANT|>`` for the reply."""
    parts = [f"<|SYSTEM|>{system}"] if system else []
    parts += [f"<|{message.role.upper()}|>{message.content}" for message in messages]
    return "".join(parts) + "<|ASSISTANT|>"


class PromptFormat(Protocol):
    """Renders a conversation (ending with the user's message) into the prompt text."""

    def render(self, system: str, messages: Sequence[ChatMessage]) -> str: ...

    def stop_tokens(self, tokenizer: Any) -> set[int]: ...


class ChatTemplateFormat:
    """The tokenizer's chat template, with ``add_generation_prompt`` for the reply."""

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise StudioError("This tokenizer has no chat template; set the preset's stablelm.prompt_format "
                              "to tuned_alpha for StableLM Tuned Alpha models.")
        self.tokenizer = tokenizer
        self._system_role = True

    def render(self, system: str, messages: Sequence[ChatMessage]) -> str:
        turns = [{"role": m.role, "content": m.content} for m in messages]
        if system and self._system_role:
            try:
                return self._apply([{"role": "system", "content": system}, *turns])
            except ValueError as error:  # jinja2's TemplateError and raise_exception() are ValueErrors
                logger.warning("chat template refuses a system message (%s); prepending it to the "
                               "first user message instead", error)
                self._system_role = False
        if system and turns:
            turns[0] = {"role": turns[0]["role"], "content": f"{system}\n\n{turns[0]['content']}"}
        return self._apply(turns)

    def _apply(self, turns: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    def stop_tokens(self, tokenizer: Any) -> set[int]:
        return {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()


class TunedAlphaFormat:
    """``<|SYSTEM|>…<|USER|>…<|ASSISTANT|>`` with the README's stop tokens."""

    def render(self, system: str, messages: Sequence[ChatMessage]) -> str:
        return render_tuned_alpha(system, messages)

    def stop_tokens(self, tokenizer: Any) -> set[int]:
        vocab = tokenizer.get_vocab()
        return {vocab[token] for token in TUNED_ALPHA_STOP_TOKENS if token in vocab}


def make_format(name: str, tokenizer: Any) -> PromptFormat:
    """The ``PromptFormat`` for a preset's ``prompt_format``."""
    if name == "chat_template":
        return ChatTemplateFormat(tokenizer)
    if name == "tuned_alpha":
        return TunedAlphaFormat()
    raise StudioError(f"Unknown prompt_format {name!r}; known: {', '.join(FORMATS)}")


@dataclass
class FittedPrompt:
    """A prompt that fits the context window together with its reply budget."""

    ids: list[int]
    text: str
    max_new_tokens: int
    notices: list[str] = field(default_factory=list)
    #: History messages left out (oldest first), for the notice and tests.
    dropped_messages: int = 0


def _cut_middle(text: str, tokens: int, encode: Callable[[str], list[int]],
                decode: Callable[[list[int]], str]) -> str:
    """Keep about ``tokens`` tokens of ``text``: its first third and its last two thirds.

    The middle goes because instructions sit at the start or at the end of a long paste (a
    question before or after a document) far more often than in the middle.
    """
    ids = encode(text)
    if len(ids) <= tokens:
        return text
    head = max(tokens // 3, 0)
    tail = max(tokens - head, 0)
    # A cut can split a multi-byte character; its replacement characters are dropped.
    start = decode(ids[:head]).rstrip("\ufffd") if head else ""
    end = decode(ids[len(ids) - tail:]).lstrip("\ufffd") if tail else ""
    return start + CUT_MARK + end


def fit_prompt(fmt: PromptFormat, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
               system: str, history: Sequence[ChatMessage], message: str, max_new_tokens: int,
               context: int) -> FittedPrompt:
    """Render the conversation so that prompt plus reply fit ``context`` tokens.

    In order, only as far as needed: shorten the reply budget, but not below a quarter of the
    window; drop the oldest turns (a user message and the replies after it); cut the middle of
    the newest message; cut the middle of the system prompt. Each step adds a notice.

    Raises:
        StudioError: the template alone does not fit (a context window of a few tokens).
    """

    def render(sys_text: str, turns: Sequence[ChatMessage], text: str) -> tuple[str, list[int]]:
        prompt = fmt.render(sys_text, [*turns, ChatMessage("user", text)])
        return prompt, encode(prompt)

    def fitted(text: str, ids: list[int], notices: list[str], dropped: int) -> FittedPrompt:
        reply = min(max_new_tokens, context - len(ids))
        if reply < max_new_tokens:
            notices.append(f"Reply limited to {reply} tokens (of {max_new_tokens} asked): the conversation "
                           f"fills the rest of the model's {context}-token context window.")
        return FittedPrompt(ids, text, reply, notices, dropped)

    text, ids = render(system, history, message)
    floor = min(max_new_tokens, max(context // MIN_REPLY_SHARE, 1))
    if len(ids) + floor <= context:
        return fitted(text, ids, [], 0)
    # Turn starts, oldest first; keeping history[start:] is shorter the later the start, so the
    # earliest start that fits is found by bisection (a few renders even for long histories).
    starts = [i for i, m in enumerate(history) if m.role == "user" and i > 0] + [len(history)]
    low, high = 0, len(starts) - 1
    last = render(system, history[starts[high]:], message)
    if len(last[1]) + floor <= context:
        while low < high:
            middle = (low + high) // 2
            if len(render(system, history[starts[middle]:], message)[1]) + floor <= context:
                high = middle
            else:
                low = middle + 1
        dropped = starts[high]
        text, ids = render(system, history[dropped:], message) if dropped < len(history) else last
        notice = (f"Dropped the {dropped} oldest message{'s' if dropped != 1 else ''} of the history to fit "
                  f"the model's {context}-token context window.")
        return fitted(text, ids, [notice], dropped)

    notices = [f"Dropped all {len(history)} history messages to fit the model's {context}-token context "
               "window."] if history else []
    overhead = len(render(system, [], "")[1])
    if overhead + floor > context - floor // 2:  # the system prompt leaves no room for the message
        system = _cut_middle(system, max(context // MIN_REPLY_SHARE, 1), encode, decode)
        notices.append("The system prompt was cut in the middle to fit the context window.")
        overhead = len(render(system, [], "")[1])
    budget = context - floor - overhead
    given = len(encode(message))
    for _ in range(8):  # re-tokenising at the cut can merge differently; shrink until it fits
        if budget <= 0:
            break
        candidate = _cut_middle(message, budget, encode, decode)
        text, ids = render(system, [], candidate)
        over = len(ids) + floor - context
        if over <= 0:
            notices.append(f"The message was cut in the middle from {given} to about {budget} tokens to fit "
                           f"the model's {context}-token context window.")
            return fitted(text, ids, notices, len(history))
        budget -= over + 2
    raise StudioError(f"The prompt template alone does not fit the model's {context}-token context window.")
