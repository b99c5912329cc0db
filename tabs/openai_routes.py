"""``/v1/models`` and ``/v1/chat/completions``: the chat model for programs that speak OpenAI's API.

Mounted as ASGI middleware behind the login (``app.launch`` puts it after ``LoginRequired``), so
a program logs in with ``api_key="USER:PASS"`` (``tabs/credentials.py``) and nothing of gradio is
patched. A completion is not run here: it is queued on gradio's GPU queue through the hidden
``/openai_chat`` event (``tabs/openai_chat.py``), by a gradio_client in this process talking to
its own server, the way gradio's MCP server runs queued tools. So a chat from another program
waits its turn behind the tabs' jobs, and the tabs' jobs behind it.

A streamed answer is server-sent events, ``data: {chunk}`` then ``data: [DONE]``. When the
client goes away mid-stream, the reply's Stop flag is set: generation ends at its next token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from backends.runtime.studio import Studio
from tabs import credentials
from tabs.asgi import ASGIApp, Receive, Scope, Send
from tabs.openai_chat import API_NAME, Completion, OpenAIError, chunk, completion, finish_reason, parse, served_model

logger = logging.getLogger(__name__)

PREFIX = "/v1/"
#: A chat request is text; a bigger body is refused before it is parsed.
BODY_LIMIT = 4 * 1024 * 1024
_END = object()
#: How often a non-streamed request looks whether its client is still there.
DISCONNECT_POLL_S = 0.25


class OpenAIRoutes:
    """ASGI middleware: answers ``/v1/...`` itself and passes every other path to gradio."""

    def __init__(self, app: ASGIApp, studio: Studio, blocks: Any) -> None:
        self.app, self.studio, self.blocks = app, studio, blocks
        self._client: Any = None
        self._client_lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        path, method = scope["path"].rstrip("/"), scope["method"]
        try:
            if path == "/v1/models" and method == "GET":
                response: Any = JSONResponse(self.models())
            elif path == "/v1/chat/completions" and method == "POST":
                response = await self.chat(request)
            elif path in ("/v1/models", "/v1/chat/completions"):
                raise OpenAIError(f"{path} does not take {method}.", status=405)
            else:
                raise OpenAIError(f"No route {path}; this server has /v1/models and /v1/chat/completions.",
                                  status=404, code="unknown_url")
        except OpenAIError as error:
            response = JSONResponse(error.body(), status_code=error.status)
        except Exception as error:  # the server keeps serving; the client gets OpenAI's shape
            logger.exception("%s %s failed", method, path)
            response = JSONResponse(_failure(error).body(), status_code=500)
        await response(scope, receive, send)

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served_model(self.studio), "object": "model", "created": 0,
                                            "owned_by": "stabilityai"}]}

    async def chat(self, request: Request) -> Any:
        body = await request.body()
        if len(body) > BODY_LIMIT:
            raise OpenAIError(f"The request is {len(body):,} bytes; the limit is {BODY_LIMIT:,}.", status=413)
        try:
            parsed = json.loads(body or b"null")
        except ValueError as error:
            raise OpenAIError(f"The body is not JSON: {error}.") from error
        wanted = parse(parsed, self.studio)
        job = await asyncio.to_thread(self._submit, request.scope["app"], wanted)
        if wanted.stream:
            return StreamingResponse(self._events(job, wanted), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        final = asyncio.ensure_future(self._next(job, wanted, finish=True))
        try:
            while not final.done():  # a client that gives up waiting stops the reply, as a dropped stream does
                await asyncio.wait({final}, timeout=DISCONNECT_POLL_S)
                if not final.done() and await request.is_disconnected():
                    self.stop(job, wanted)
                    final.cancel()  # its thread ends with the job; nothing waits for it now
                    raise OpenAIError("The client went away; the reply was stopped.", status=499)
        except asyncio.CancelledError:
            self.stop(job, wanted)
            raise
        answer = final.result()
        return JSONResponse(completion(wanted, answer["text"], answer["stats"]))

    def _submit(self, app: Any, wanted: Completion) -> Any:
        with self._client_lock:
            if self._client is None:
                from gradio_client import Client

                self._client = Client(self.blocks.local_url, headers=credentials.headers(app), verbose=False,
                                      download_files=False, analytics_enabled=False)
        return self._client.submit({"job": wanted.job, "inputs": wanted.inputs}, api_name=f"/{API_NAME}")

    async def _events(self, job: Any, wanted: Completion) -> AsyncIterator[bytes]:
        """The SSE stream: a role chunk, the new text of each update, the finish, usage, [DONE]."""
        sent, finished = "", False
        try:
            yield _event(chunk(wanted, {"role": "assistant", "content": ""}))
            while True:
                try:
                    update = await self._next(job, wanted)
                except OpenAIError as error:
                    yield _event(error.body())
                    break
                if update is None:
                    break
                text, stats = update["text"], update["stats"]
                if len(text) > len(sent):
                    yield _event(chunk(wanted, {"content": text[len(sent):]}))
                    sent = text
                if stats is not None:
                    yield _event(chunk(wanted, {}, finish=finish_reason(stats)))
                    if wanted.include_usage:
                        yield _event(chunk(wanted, {}, usage_of=stats, choices=False))
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:  # the client went away: end the reply at its next token
                self.stop(job, wanted)

    async def _next(self, job: Any, wanted: Completion, finish: bool = False) -> dict[str, Any] | None:
        """The job's next update (or, with ``finish``, its last); None at its end.

        Raises:
            OpenAIError: the job failed; gradio_client's message names the field or the cause.
        """
        try:
            if finish:
                return await asyncio.to_thread(job.result)
            update = await asyncio.to_thread(next, job, _END)
        except Exception as error:  # gradio_client's AppError, or the loopback connection failing
            raise _failure(error) from error
        if update is _END:
            failure = job.exception() if job.done() else None
            if failure is not None:
                raise _failure(failure)
            return None
        return update

    def stop(self, job: Any, wanted: Completion) -> None:
        """Stop the reply at its next token and leave the queue (the client went away).

        The Stop flag ends a running reply; gradio's cancel takes one still waiting off the queue.
        gradio_client cancels with a blocking HTTP call to this same server, so it runs in a
        thread: on the event loop it would wait for an answer the loop can no longer give.
        """
        if self.studio.stop_job(wanted.job):
            logger.info("OpenAI client went away: its reply %s… stops at the next token", wanted.job[7:15])
        threading.Thread(target=_cancel, args=(job,), name=f"cancel-{wanted.job[7:15]}", daemon=True).start()


def _cancel(job: Any) -> None:
    try:
        job.cancel()
    except Exception as error:  # noqa: BLE001 - the job may have ended meanwhile; nothing is lost
        logger.info("cancelling a finished OpenAI job: %s", error)


def _failure(error: BaseException) -> OpenAIError:
    """A failed queued job as OpenAI's server error (input was checked before it was queued)."""
    message = str(error) or type(error).__name__
    return OpenAIError(f"The reply failed: {message}", status=500, kind="server_error")


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"
