"""Chat tab: StableLM with streamed replies, Stop, Regenerate, Clear and the sampling settings.

Two events run the same reply stream (``stream_reply``):
- the tab's Send / Enter / Regenerate, which stream into the Chatbot (private events);
- ``/chat``, the public API: DESIGN.md's inputs in order (message, history, system_prompt,
  temperature, top_p, max_new_tokens), then top_k and repetition_penalty, which have defaults and
  may be left out. It streams the reply text: ``client.submit(...)`` yields the growing reply, as
  ``gr.ChatInterface``'s ``/chat`` does. It reads its own hidden components, so the API's
  defaults are the preset's, whatever a browser user has set in the tab.

Stop sets the session's Stop flag (the backend checks it before every token) and cancels the
event, which closes the stream and releases the model. A stopped reply keeps the text so far.
Replies are decoded in a thread of their own (see ``stream_reply``), so Gradio's per-update work
never slows decoding down.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import gradio as gr

from backends.runtime.errors import Cancelled
from backends.runtime.progress import JobControl, no_progress
from backends.runtime.studio import Studio
from backends.stablelm.backend import context_window
from backends.stablelm.prompt import default_system_prompt
from backends.stablelm.requests import MAX_NEW_TOKENS, ChatRequest, flatten_content
from tabs.common import GPU_QUEUE, on_gpu, on_page_load, session_of, standalone, user_errors, wire_stop

logger = logging.getLogger(__name__)

_DONE = object()  # ``guarded``: the wrapped generator is exhausted
_END = object()  # the reply thread's last queue item
#: How long closing a reply waits for its thread: Stop is checked before every token, so this
#: only runs out while a model is still loading from disk.
JOIN_TIMEOUT_S = 120.0
#: At most about 30 updates a second: smooth to the eye, while each Chatbot update costs Gradio
#: milliseconds of Python that would otherwise compete with decoding for the GIL.
UPDATE_INTERVAL_S = 0.03


@dataclass
class Reply:
    """The reply so far, as the handlers show it."""

    text: str = ""
    notices: list[str] = field(default_factory=list)
    stats: dict[str, Any] | None = None
    stopped: bool = False


def stream_reply(studio: Studio, session: str, inputs: list[Any]) -> Iterator[Reply]:
    """Validate ``inputs`` (in ``/chat``'s order) and stream the reply through the registry.

    The reply is generated in its own thread and handed over through a queue; each update takes
    every piece that arrived since the last one (the first piece goes out at once). Gradio's work
    per update (a Chatbot update costs milliseconds) then overlaps decoding instead of pausing
    it, so the reply streams at the model's speed and the device is held no longer than decoding
    takes (tiny model in the tab, on a busy 2-core machine: about 530 tokens/s this way, 72 with
    one synchronous update per token). Stop (the session's
    flag) ends the stream with the text so far instead of an error; closing the stream (Gradio's
    cancel) stops the thread at its next token and waits for it, so the model is idle on return.
    """
    request = ChatRequest.build(*inputs)
    control = studio.start_job(session)
    pieces: queue.SimpleQueue[Any] = queue.SimpleQueue()
    producer = threading.Thread(target=_produce, args=(studio, request, control, pieces),
                                name=f"chat-{session[:8]}", daemon=True)
    producer.start()
    reply = Reply()
    try:
        finished, last_update = False, 0.0
        while not finished:
            batch = [pieces.get()]
            while batch[-1] is not _END:  # gather until UPDATE_INTERVAL_S after the last update
                wait = UPDATE_INTERVAL_S - (time.monotonic() - last_update)
                try:
                    batch.append(pieces.get(timeout=wait) if wait > 0 else pieces.get_nowait())
                except queue.Empty:
                    break
            for item in batch:
                if item is _END:
                    finished = True
                elif isinstance(item, Cancelled):
                    reply.stopped = True
                elif isinstance(item, BaseException):
                    raise item
                else:
                    reply.text += item.text
                    reply.notices.extend(item.notices)
                    if item.stats is not None:
                        reply.stats = item.stats.as_dict()
            yield reply
            last_update = time.monotonic()
    finally:
        control.cancel()  # no-op when the reply is complete; otherwise stops it at the next token
        producer.join(timeout=JOIN_TIMEOUT_S)
        if producer.is_alive():
            logger.warning("chat reply thread still running %.0f s after Stop", JOIN_TIMEOUT_S)
        studio.finish_job(session, control)


def _produce(studio: Studio, request: ChatRequest, control: JobControl, pieces: queue.SimpleQueue[Any]) -> None:
    """Run one reply to its end, putting each chunk, then any failure, then ``_END``."""
    try:
        stream = studio.registry.stream("chat", request, control.wrap(no_progress))
        with contextlib.closing(stream):
            for chunk in stream:
                pieces.put(chunk)
    except Exception as error:  # handed to the consumer thread, which raises it at the UI boundary
        pieces.put(error)
    finally:
        pieces.put(_END)


def guarded(what: str, items: Iterator[Reply]) -> Iterator[Reply]:
    """``user_errors`` for a generator: every failure of a step becomes a ``gr.Error``."""
    with contextlib.closing(items):  # type: ignore[type-var]
        while True:
            item = user_errors(what, lambda: next(items, _DONE))
            if item is _DONE:
                return
            yield item


def stats_markdown(reply: Reply) -> str:
    """One line of figures under the chat, then the notices."""
    if reply.stopped:
        line = "Stopped."
    elif reply.stats is None:
        line = "Generating…"
    else:
        s = reply.stats
        reason = {"stop": "end of turn", "length": "max_new_tokens reached"}.get(s["stop_reason"], s["stop_reason"])
        first = s["first_token_s"]
        first_text = f"{first * 1000:.0f} ms" if first < 1 else f"{first:.2f} s"
        line = (f"**{s['tokens']} tokens** · {s['tokens_per_s']:.1f} tokens/s · first token after {first_text} · "
                f"prompt {s['prompt_tokens']} tokens · {reason}")
    return "\n\n".join([line, *(f"⚠️ {notice}" for notice in reply.notices)])


def _plain(chat: list[Any] | None) -> list[dict[str, str]]:
    """Chatbot messages with their content flattened to text (Gradio hands back part lists)."""
    plain = []
    for message in chat or []:
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
        if role in ("user", "assistant"):
            plain.append({"role": role, "content": flatten_content(content)})
    return plain


def build(studio: Studio) -> dict[str, Any]:
    """Build the tab's components and wire its events (call inside a ``gr.Blocks``).

    Returns:
        The main components by name, for tests and for other code that wires to them.
    """
    settings = studio.preset.settings.stablelm
    defaults = settings.defaults
    system_default = default_system_prompt(settings.prompt_format, defaults.system_prompt)
    gr.Markdown(f"**Model:** {settings.display_name} · **License:** {settings.license} · "
                f"prompt format `{settings.prompt_format}`", elem_id="chat-model")
    chatbot = gr.Chatbot(label="Chat", height=460, elem_id="chat-bot", buttons=["copy", "copy_all"],
                         placeholder="Replies stream here. Stop ends a reply at the next token.")
    with gr.Row():
        # lines=1 with room to grow: gradio 6.31 submits a one-line box on Enter and lets Shift+Enter
        # add a line, the habit of every chat app; a box of lines>1 does the reverse.
        message = gr.Textbox(label="Message", placeholder="Type a message: Enter sends, Shift+Enter adds a line",
                             lines=1, max_lines=8, scale=5, elem_id="chat-message")
        with gr.Column(scale=1, min_width=120):
            send = gr.Button("Send", variant="primary", elem_id="chat-send")
            stop = gr.Button("Stop", variant="stop", elem_id="chat-stop")
    with gr.Row():
        regenerate = gr.Button("Regenerate", size="sm", elem_id="chat-regenerate")
        clear = gr.Button("Clear", size="sm", elem_id="chat-clear")
    stats = gr.Markdown(elem_id="chat-stats")
    with gr.Accordion("Settings", open=False):
        system = gr.Textbox(label="System prompt", value=system_default, lines=3, elem_id="chat-system")
        with gr.Row():
            temperature = gr.Slider(0.0, 2.0, value=defaults.temperature, step=0.05, label="Temperature",
                                    info="0 is greedy (always the likeliest token)")
            top_p = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.01, label="Top-p")
            max_new = gr.Slider(1, MAX_NEW_TOKENS, value=defaults.max_new_tokens, step=1, label="Max new tokens")
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                top_k = gr.Slider(0, 200, value=defaults.top_k, step=1, label="Top-k", info="0 is off")
                repetition = gr.Slider(1.0, 2.0, value=defaults.repetition_penalty, step=0.01,
                                       label="Repetition penalty", info="1 is off")
    pending = gr.State("")

    def check_message(text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            not_yet("Message (message): is empty; type what you want to say.")

    def accept(text: str, chat: list[Any]) -> tuple[str, list[dict[str, str]], str]:
        return "", [*_plain(chat), {"role": "user", "content": text}], text

    def check_retry(chat: list[Any]) -> None:
        if not any(m["role"] == "user" for m in _plain(chat)):
            not_yet("Nothing to regenerate yet: send a message first.")

    def retry(chat: list[Any]) -> tuple[list[dict[str, str]], str]:
        plain = _plain(chat)
        last = max(i for i, m in enumerate(plain) if m["role"] == "user")
        return plain[: last + 1], plain[last]["content"]

    def respond(text: str, chat: list[Any], sys_prompt: str, temp: float, nucleus: float, new_tokens: float,
                k: float, penalty: float, request: gr.Request) -> Iterator[tuple[list[dict[str, str]], str]]:
        plain = _plain(chat)
        history = plain[:-1]  # the last message is ``text``, shown by accept() or retry()
        inputs = [text, history, sys_prompt, temp, nucleus, new_tokens, k, penalty]
        for reply in guarded("Chat", stream_reply(studio, session_of(request), inputs)):
            yield [*plain, {"role": "assistant", "content": reply.text}], stats_markdown(reply)

    ui_inputs = [pending, chatbot, system, temperature, top_p, max_new, top_k, repetition]
    respond_event = dict(fn=on_gpu(respond, gpu_seconds), inputs=ui_inputs, outputs=[chatbot, stats],
                         api_visibility="private",
                         **GPU_QUEUE)
    # The checks have no outputs, so a refused message marks no component with gradio's "Error"
    # pill, and they are queued (in a group of their own, never behind the GPU) because gradio
    # drops gr.Warning from events outside the queue. Their hidden error ends the chain.
    checked = dict(outputs=None, api_visibility="private", concurrency_limit=None, concurrency_id="chat-check",
                   show_progress="hidden")
    accepted = dict(fn=accept, inputs=[message, chatbot], outputs=[message, chatbot, pending],
                    api_visibility="private", queue=False)
    events = [send.click(check_message, message, **checked).success(**accepted).success(**respond_event),
              message.submit(check_message, message, **checked).success(**accepted).success(**respond_event),
              regenerate.click(check_retry, chatbot, **checked)
              .success(retry, chatbot, [chatbot, pending], api_visibility="private", queue=False)
              .success(**respond_event)]
    # Clear cancels a reply still streaming (otherwise its next update brings the chat back). It
    # queues behind the reply's slot, so its empty chat reaches the page after the reply's last update.
    clear.click(lambda: ([], ""), None, [chatbot, stats], api_visibility="private", cancels=events, **GPU_QUEUE)

    # The cancelled reply never sends its last update, so the figures line says it instead.
    wire_stop(studio, stop, events, notice="Stopping the reply…").then(
        lambda line: "Stopped." if str(line).startswith("Generating") else gr.skip(), stats, stats,
        api_visibility="private", queue=False)
    on_page_load(lambda: gr.update(maximum=context_cap(studio)), max_new)
    _register_api(studio, system_default)
    return {"chatbot": chatbot, "message": message, "send": send, "stop": stop, "regenerate": regenerate,
            "clear": clear, "stats": stats, "system_prompt": system, "temperature": temperature,
            "top_p": top_p, "max_new_tokens": max_new, "top_k": top_k, "repetition_penalty": repetition}


def not_yet(notice: str) -> None:
    """Say ``notice`` as a warning and end the event chain, leaving the chat as it was.

    A plain ``gr.Error`` would also end the chain, but as a red error toast for what is only a
    nudge; the hidden one ends it without a second message.
    """
    gr.Warning(notice, title="Nothing sent")
    raise gr.Error(notice, visible=False, print_exception=False)


def context_cap(studio: Studio) -> int:
    """The most new tokens the chat model can give: its context window, once its config is on disk.

    Until then the request's own limit (``MAX_NEW_TOKENS``) holds; either way the backend shortens
    a reply that the window cannot hold after the prompt, and says so.
    """
    context = context_window(studio.registry.settings("stablelm"), studio.ctx)
    return MAX_NEW_TOKENS if context is None else max(1, min(MAX_NEW_TOKENS, context))


def gpu_seconds(message: Any, history: Any, system_prompt: Any, temperature: Any, top_p: Any,
                max_new_tokens: Any, *_: Any, **__: Any) -> int:
    """ZeroGPU duration for one reply: a cold load (~20 s) plus max_new_tokens at 20 tokens/s.

    20 tokens/s is well below what our decode loop reaches on a GPU, so long replies finish.
    """
    try:
        tokens = float(max_new_tokens)
    except (TypeError, ValueError):
        return 30  # invalid input fails fast in the handler
    return int(min(180, max(30, 20 + tokens / 20)))


def _register_api(studio: Studio, system_default: str) -> None:
    """``/chat``: hidden components named as DESIGN.md's inputs, streaming the reply text."""
    defaults = studio.preset.settings.stablelm.defaults
    with gr.Group(visible=False):
        inputs = [
            gr.Textbox(label="message"),
            # JSON, not Chatbot: a Chatbot input rejects plain {"role", "content": "text"} messages
            # with a pydantic error before our validation can name the field (gradio 6.31).
            gr.JSON(label="history", value=[]),
            gr.Textbox(label="system_prompt", value=system_default),
            gr.Number(label="temperature", value=defaults.temperature),
            gr.Number(label="top_p", value=defaults.top_p),
            gr.Number(label="max_new_tokens", value=defaults.max_new_tokens),
            # Not in the contract: the preset's values, held as state so that a client sending
            # exactly the six contract inputs (raw HTTP included) is answered, not refused.
            gr.State(defaults.top_k),
            gr.State(defaults.repetition_penalty),
        ]
        reply_box = gr.Textbox(label="reply")
        trigger = gr.Button("chat api")

    def chat(message: str, history: list[Any], system_prompt: str | None, temperature: float, top_p: float,
             max_new_tokens: float, top_k: float, repetition_penalty: float,
             request: gr.Request) -> Iterator[str]:
        """Ask the local StableLM chat model (Stability AI) for a reply; it sees the history given, nothing else.

        The model keeps no memory between calls: send the earlier turns as history. Streams through the
        gradio API (each update is the whole reply so far); an MCP call returns the finished reply.

        Args:
            message: the user's new message (not empty; at most 20000 characters).
            history: earlier turns, oldest first: [{"role": "user" or "assistant", "content": "text"}]; [] for none.
            system_prompt: instructions for the model's role and tone; empty for none.
            temperature: sampling temperature, 0 to 2; 0 is greedy (the same reply every time), 0.7 is typical.
            top_p: nucleus sampling mass, more than 0 and at most 1 (0.95 is typical).
            max_new_tokens: longest reply in tokens, 1 to 4096; shortened when the model's context window is full.

        Returns:
            The reply text.
        """
        shown = 0
        inputs = [message, history, system_prompt, temperature, top_p, max_new_tokens, top_k, repetition_penalty]
        for reply in guarded("Chat", stream_reply(studio, session_of(request), inputs)):
            for notice in reply.notices[shown:]:
                gr.Warning(notice)
            shown = len(reply.notices)
            yield reply.text

    # preprocess=False: gr.Textbox would turn a number or a dict sent as the message into its str();
    # our validation sees the value as sent and names the field instead.
    trigger.click(on_gpu(chat, gpu_seconds), inputs, reply_box, api_name="chat", preprocess=False, **GPU_QUEUE)


def demo(studio: Studio) -> gr.Blocks:
    """This tab alone, for a quick look: ``demo(studio).launch()``."""
    return standalone(build, studio, "Cascade Studio: Chat")
