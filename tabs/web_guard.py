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
  (``tabs/api_inputs.py``) answers such a call with the endpoint's input names, before gradio runs it.

Programs log in with an ``Authorization`` header instead of the form's cookie
(``tabs/credentials.py``); a wrong one counts against the same throttle.

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
from typing import Any, Callable

from limits import parse
from slowapi import Limiter
from slowapi.util import get_remote_address
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from tabs import credentials
from tabs.api_inputs import API_BODY_LIMIT, ApiInputCheck
from tabs.asgi import ASGIApp, Message, Receive, Scope, Send, forward, read_body, replay

logger = logging.getLogger(__name__)


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
        elif any(key.lower() == b"authorization" for key, _ in scope.get("headers", [])):
            await self._header_login(scope, receive, send)
        elif method == "GET" and scope["path"] == "/":  # the login form, less what it need not show
            await self.app(scope, receive, without_api_info(send))
        elif is_public(method, scope["path"]):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await self._refuse(scope, receive, send)

    async def _header_login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A program's login (``tabs/credentials.py``): throttled and answered like the form's."""
        address = get_remote_address(Request(scope))
        try:
            login = credentials.authorization(scope)
        except credentials.Malformed as error:
            await self._refuse(scope, receive, send, f"Not authenticated: {error}")
            return
        async with self._one_login_at_a_time:
            if not self.throttle.allows(address):
                await self._too_many(scope, receive, send, address)
                return
            if login is None or not await credentials.accepts(scope["app"].auth, *login):
                left = self.throttle.failed(address)
                logger.info("wrong Authorization header from %s (%d more allowed in the window)", address, left)
                await self._refuse(scope, receive, send, "Not authenticated: wrong user or password in the "
                                                          f"Authorization header; {credentials.HOW}")
                return
        await self.app(credentials.logged_in_as(scope["app"], scope, login[0]), receive, send)

    async def _too_many(self, scope: Scope, receive: Receive, send: Send, address: str) -> None:
        wait = self.throttle.retry_after(address)
        message = f"Too many failed logins from {address}: at most {self.throttle.describe()}. Try again in {wait} s."
        refusal = JSONResponse({"detail": message}, status_code=429, headers={"Retry-After": str(wait)})
        await refusal(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: str = "Not authenticated") -> None:
        """401 in the body of gradio's own refusal (``login_check``), which its page and client understand."""
        body: dict[str, Any] = {"detail": {"error": error, "auth_message": self.auth_message}}
        if scope["path"].startswith("/v1/"):  # OpenAI's clients read the message from OpenAI's shape
            message = error if credentials.HOW in error else f"{error}: {credentials.HOW}"
            body = {"error": {"message": message, "type": "invalid_request_error",
                              "param": None, "code": "invalid_api_key"}}
        await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        address = get_remote_address(Request(scope))
        body = await read_body(receive, LOGIN_BODY_LIMIT)
        if body is None:
            await JSONResponse({"detail": "A login form is a user name and a password."},
                               status_code=413)(scope, receive, send)
            return
        async with self._one_login_at_a_time:
            if not self.throttle.allows(address):
                await self._too_many(scope, receive, send, address)
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
