"""Named missing API inputs: an API call that leaves out inputs is told their names and order.

One of the guards ``tabs/web_guard.py`` puts in front of gradio's routes.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from tabs.asgi import ASGIApp, Receive, Scope, Send, read_body, replay

logger = logging.getLogger(__name__)

#: The raw API routes that take a list of inputs in ``data`` (gradio 6.31 ``routes.py``).
POSITIONAL_CALL = re.compile(r"/gradio_api/(?:call|run|api)/(?P<name>[^/]+)/?")
#: ``/call/v2`` takes the inputs by name, as a JSON object.
KEYWORD_CALL = re.compile(r"/gradio_api/call/v2/(?P<name>[^/]+)/?")
#: Bodies up to this size are checked. A bigger one (a picture inlined as a data URL) passes to
#: gradio unread, so the check never holds a second copy of a large body.
API_BODY_LIMIT = 4 * 1024 * 1024


class ApiInputCheck:
    """ASGI middleware: an API call that leaves out inputs is answered 422 with their names.

    gradio 6.31 refuses such a call only when it runs, and tells the caller ``{"error": null}``.
    The names and their order come from the Blocks' API description (``get_api_info``), the one
    ``/gradio_api/info`` and gradio_client use. Calls that name a function by ``fn_index`` (the
    browser's) pass unchecked.
    """

    def __init__(self, app: ASGIApp, blocks: Any) -> None:
        self.app = app
        self.blocks = blocks
        self._inputs: dict[str, list[tuple[str, bool]]] | None = None

    def inputs(self, endpoint: str) -> list[tuple[str, bool]] | None:
        """``(name, has_default)`` of each input of ``/endpoint``, in order; None for no such endpoint."""
        if self._inputs is None:  # the description is final once the app serves
            described = self.blocks.get_api_info(all_endpoints=True)["named_endpoints"]
            self._inputs = {name: [(p["parameter_name"], bool(p.get("parameter_has_default")))
                                   for p in info["parameters"]]
                            for name, info in described.items()}
        return self._inputs.get(f"/{endpoint}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        keyword = KEYWORD_CALL.fullmatch(scope["path"])
        positional = None if keyword else POSITIONAL_CALL.fullmatch(scope["path"])
        match = keyword or positional
        length = Request(scope).headers.get("content-length", "")
        if match is None or not length.isdigit() or int(length) > API_BODY_LIMIT:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, int(length))
        if body is None:  # longer than its own Content-Length
            await JSONResponse({"error": "The body is longer than its Content-Length."},
                               status_code=400)(scope, receive, send)
            return
        problem = self.problem(match["name"], body, keyword=bool(keyword))
        if problem is None:
            await self.app(scope, replay(body, receive), send)
            return
        logger.info("refused a call of /%s: %s", match["name"], problem)
        await JSONResponse({"error": problem}, status_code=422)(scope, receive, send)

    def problem(self, endpoint: str, body: bytes, keyword: bool) -> str | None:
        """What is missing from a call of ``/endpoint``, or None to let gradio handle it."""
        inputs = self.inputs(endpoint)
        try:
            payload = json.loads(body)
        except ValueError:
            return None  # gradio answers a body that is not JSON itself
        if inputs is None or not isinstance(payload, dict):
            return None
        names = [name for name, _ in inputs]
        order = f"/{endpoint} takes {_count(len(names), 'input')}, in this order: {', '.join(names) or 'none'}"
        if keyword:
            unknown = [key for key in payload if key not in names and key != "oauth_token"]
            missing = [name for name, has_default in inputs if not has_default and name not in payload]
            if unknown:
                return f"{order}; {', '.join(unknown)} {_is_are(unknown)} not among them."
            if missing:
                return f"{order}; {', '.join(missing)} {_has_have(missing)} no default and must be given."
            return None
        data = payload.get("data")
        if payload.get("fn_index") is not None or payload.get("batched") or not isinstance(data, list):
            return None
        if len(data) >= len(names):
            return None
        missing = names[len(data):]
        return (f"{order}; this call sent {len(data)}, so {', '.join(missing)} {_is_are(missing)} missing. "
                f"Send every input in \"data\", in that order (gradio_client fills in the defaults).")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _is_are(items: list[str]) -> str:
    return "is" if len(items) == 1 else "are"


def _has_have(items: list[str]) -> str:
    return "has" if len(items) == 1 else "have"
