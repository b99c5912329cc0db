"""Guards in front of gradio's routes: the login on every route, a failed-login throttle, and named
missing API inputs.

Three gaps of ``launch(auth=...)``, each seen on gradio 6.31:

* Some routes answer without the login. ``POST /gradio_api/cancel`` and ``/gradio_api/reset`` are
  among them: anyone who has a user's session hash and event id can stop that user's job. FastAPI's
  own ``/openapi.json`` and the heartbeat, stream and monitoring routes answer too.
  ``LoginRequired`` refuses every route to a caller without the login, except the login page and
  what that page needs to render and submit.
* Wrong passwords are not slowed down (30 tries took 0.1 s). ``LoginRequired`` counts failed logins
  per client address, with slowapi's limiter, and answers 429 once an address passes
  ``LOGIN_LIMIT``.
* An API call with fewer inputs than its endpoint takes gets ``{"error": null}``. ``ApiInputCheck``
  answers such a call with the endpoint's input names, before gradio runs it.

``app.launch`` hands both to ``gr.Blocks.launch(app_kwargs={"middleware": ...})``. FastAPI builds
them into the app in front of gradio's routes, so nothing of gradio is patched. Both are plain
ASGI, so a streamed answer (the queue's event stream) passes through as it comes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from typing import Any, Awaitable, Callable, MutableMapping

from limits import parse
from slowapi import Limiter
from slowapi.util import get_remote_address
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Failed logins one client address may make in a moving window. Past it, every login from that
#: address is refused, right ones too, until the oldest failure leaves the window: otherwise a 200
#: among the 429s would tell a guesser which password was right.
LOGIN_LIMIT = "5/minute"
LOGIN_PATHS = frozenset({"/login", "/login/"})
#: The login form posts a user name and a password; a bigger body is not a login.
LOGIN_BODY_LIMIT = 64 * 1024
#: GET (and HEAD) routes that answer without the login. These are what the login page loads,
#: recorded in Chromium on gradio 6.31: the page itself (``/`` shows the login form until the
#: cookie is set), its scripts, styles and fonts, and ``theme.css``. Also here are the icons a
#: browser asks for by itself, and ``startup-events``: ``launch()`` calls it without a cookie to
#: start the queue, and it answers only true or false.
PUBLIC_PATHS = frozenset({"/", "/theme.css", "/gradio_api/theme.css", "/favicon.ico", "/manifest.json",
                          "/robots.txt", "/pwa_icon", "/gradio_api/startup-events"})
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")
#: gradio 6.31's two login cookies (``routes.py``): the first is Secure (https only), the second
#: is sent over plain http.
COOKIE_PREFIXES = ("access-token-", "access-token-unsecure-")

#: Where gradio 6.31's page template (``templates/frontend/index.html``) writes the API description.
API_INFO_SCRIPT = re.compile(rb"(<script>window\.gradio_api_info = ).*?(;</script>)", re.DOTALL)
#: What the login page gets instead: an empty description, so its client does not fetch /info.
NO_API_INFO = rb'{"named_endpoints": {}, "unnamed_endpoints": {}}'

#: The raw API routes that take a list of inputs in ``data`` (gradio 6.31 ``routes.py``).
POSITIONAL_CALL = re.compile(r"/gradio_api/(?:call|run|api)/(?P<name>[^/]+)/?")
#: ``/call/v2`` takes the inputs by name, as a JSON object.
KEYWORD_CALL = re.compile(r"/gradio_api/call/v2/(?P<name>[^/]+)/?")
#: Bodies up to this size are checked. A bigger one (a picture inlined as a data URL) passes to
#: gradio unread, so the check never holds a second copy of a large body.
API_BODY_LIMIT = 4 * 1024 * 1024


def middleware(blocks: Any, auth_message: str, login_limit: str = LOGIN_LIMIT,
               on_cancel: Callable[[str], Any] | None = None) -> list[Middleware]:
    """The guards for ``launch(app_kwargs={"middleware": ...})``, outermost first.

    The login check comes first, so that the input check never tells a stranger an endpoint's
    input names, and only a logged-in caller's cancel reaches ``on_cancel``.

    Args:
        on_cancel: called with the session of each call of gradio's cancel route (the Studio's
            ``stop_job``), so that a cancelled job stops at its next step (``CancelStopsJob``).
    """
    guards = [Middleware(LoginRequired, auth_message=auth_message, login_limit=login_limit)]
    if on_cancel is not None:
        guards.append(Middleware(CancelStopsJob, on_cancel=on_cancel))
    return [*guards, Middleware(ApiInputCheck, blocks=blocks)]


def logged_in(app: Any, request: Request) -> bool:
    """Whether the request carries one of the app's live login cookies.

    Workaround for gradio 6.31: its own check (``login_check`` in ``routes.py``) runs only on the
    routes that declare it. This reads the same cookies, named after ``app.cookie_id``, and looks
    their token up in the same table, ``app.tokens``, which the login and logout routes keep.
    """
    tokens = app.tokens
    for prefix in COOKIE_PREFIXES:
        token = request.cookies.get(f"{prefix}{app.cookie_id}")
        if token and tokens.get(token) is not None:
            return True
    return False


def is_public(method: str, path: str) -> bool:
    """Whether a route answers without the login: the login page, its files, and the form's POST."""
    if method == "POST":
        return path in LOGIN_PATHS
    return method in ("GET", "HEAD") and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))


class LoginThrottle:
    """Failed logins per client address, counted by slowapi's limiter in a moving window."""

    def __init__(self, limit: str = LOGIN_LIMIT) -> None:
        # A moving window: a fixed one (slowapi's default) would allow twice the limit across
        # the turn of a minute. ``config_filename=None``: no ``.env`` file of the cwd is read.
        self._counter = Limiter(key_func=get_remote_address, strategy="moving-window",
                                config_filename=None).limiter
        self.limit = parse(limit)

    def allows(self, address: str) -> bool:
        """Whether ``address`` may try another login now."""
        return self._counter.test(self.limit, "login", address)

    def failed(self, address: str) -> int:
        """Count a failed login of ``address``; returns how many more it may make in the window."""
        self._counter.hit(self.limit, "login", address)
        return self._counter.get_window_stats(self.limit, "login", address).remaining

    def retry_after(self, address: str) -> int:
        """Seconds until ``address`` may try again (at least 1)."""
        reset = self._counter.get_window_stats(self.limit, "login", address).reset_time
        return max(1, math.ceil(reset - time.time()))

    def describe(self) -> str:
        """The limit in words, e.g. "5 a minute"."""
        unit, amount, multiples = self.limit.GRANULARITY.name, self.limit.amount, self.limit.multiples
        return f"{amount} a {unit}" if multiples == 1 else f"{amount} per {multiples} {unit}s"


class LoginRequired:
    """ASGI middleware: with a login configured, every route but the public ones needs its cookie.

    It also throttles ``POST /login``: past the limit an address gets 429 and its password is not
    checked. Attempts are handled one at a time, each with its form already read, so a burst of
    parallel guesses cannot all pass the count before the first failure is added, and a slow
    sender cannot hold the others up.
    """

    def __init__(self, app: ASGIApp, auth_message: str, login_limit: str = LOGIN_LIMIT) -> None:
        self.app = app
        self.auth_message = auth_message
        self.throttle = LoginThrottle(login_limit)
        self._one_login_at_a_time = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # ``scope["app"]`` is gradio's App (Starlette sets it): its ``auth`` is None without a login.
        gradio_app = scope["app"]
        method = scope.get("method", "GET")
        if gradio_app.auth is None:
            await self.app(scope, receive, send)
        elif method == "POST" and scope["path"] in LOGIN_PATHS:
            await self._login(scope, receive, send)
        elif logged_in(gradio_app, Request(scope)):
            await self.app(scope, receive, send)
        elif method == "GET" and scope["path"] == "/":  # the login form, less what it need not show
            await self.app(scope, receive, without_api_info(send))
        elif is_public(method, scope["path"]):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            # The body of gradio's own refusal (``login_check``), which its login page and
            # gradio_client already understand.
            refusal = JSONResponse({"detail": {"error": "Not authenticated", "auth_message": self.auth_message}},
                                   status_code=401)
            await refusal(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        address = get_remote_address(Request(scope))
        body = await read_body(receive, LOGIN_BODY_LIMIT)
        if body is None:
            await JSONResponse({"detail": "A login form is a user name and a password."},
                               status_code=413)(scope, receive, send)
            return
        async with self._one_login_at_a_time:
            if not self.throttle.allows(address):
                wait = self.throttle.retry_after(address)
                message = (f"Too many failed logins from {address}: at most {self.throttle.describe()}. "
                           f"Try again in {wait} s.")
                await JSONResponse({"detail": message}, status_code=429,
                                   headers={"Retry-After": str(wait)})(scope, receive, send)
                return
            status = await forward(self.app, scope, replay(body, receive), send)
            if status == 400:  # gradio 6.31's answer to a wrong user or password
                left = self.throttle.failed(address)
                if left:
                    logger.info("failed login from %s (%d more allowed in the window)", address, left)
                else:
                    logger.warning("failed logins from %s reached %s: its logins are refused for %d s",
                                   address, self.throttle.describe(), self.throttle.retry_after(address))


#: Gradio's cancel route: ``{"session_hash", "fn_index", "event_id"}`` (gradio_client's
#: ``job.cancel()``, and the page's own for events in a button's ``cancels``).
CANCEL = re.compile(r"/gradio_api/cancel/?")


class CancelStopsJob:
    """ASGI middleware: gradio's cancel route also stops the session's job at its next step.

    gradio 6.31's cancel ends the event's asyncio task, but a handler runs in a worker thread
    that nothing can interrupt, so the job ran to its end, saved its result and held the GPU
    queue (25.8 s measured for the next job). The session's Stop flag ends it at the next step,
    saving nothing, as the Stop button does.
    """

    def __init__(self, app: ASGIApp, on_cancel: Callable[[str], Any]) -> None:
        self.app = app
        self.on_cancel = on_cancel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = Request(scope).headers.get("content-length", "") if scope["type"] == "http" else ""
        if (scope["type"] != "http" or scope["method"] != "POST" or CANCEL.fullmatch(scope["path"]) is None
                or not length.isdigit() or int(length) > API_BODY_LIMIT):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, int(length))
        try:
            session = json.loads(body or b"").get("session_hash")
        except (ValueError, AttributeError):
            session = None
        if isinstance(session, str) and session and self.on_cancel(session):
            logger.info("cancel of session %s…: its job stops at the next step", session[:8])
        await self.app(scope, replay(body or b"", receive), send)


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


def without_api_info(send: Send) -> Send:
    """A ``send`` that empties the API description out of the login page, then sends it.

    Workaround for gradio 6.31: ``/`` before the login (the login form) writes the whole API
    description (every endpoint, its inputs and their defaults) into ``window.gradio_api_info``,
    which ``/gradio_api/info`` refuses without the login. The form needs none of it. (Its JSON
    escapes ``<``, so ``</script>`` cannot occur inside it.)
    """
    start: Message = {}
    chunks: list[bytes] = []

    async def rewrite(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = API_INFO_SCRIPT.sub(rb"\g<1>" + NO_API_INFO + rb"\g<2>", b"".join(chunks))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return rewrite


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it passes ``limit`` bytes (the rest is left unread)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client went away; the route sees an empty body
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the route the body already read, then listens for a disconnect."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


async def forward(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> int:
    """Run ``app`` on the request and return the status code it answered with."""
    status = 0

    async def watch(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    await app(scope, receive, watch)
    return status
