"""Logins for programs: an ``Authorization`` header in place of gradio's login cookie.

A browser logs in through gradio's form and keeps a cookie. Programs cannot: the ``openai``
client sends its ``api_key`` as ``Authorization: Bearer …``, and MCP clients are configured with
headers. So every route also takes ``Authorization: Bearer USER:PASS`` or HTTP Basic with the same
logins as the form.

gradio 6.31 checks its own routes (the queue's join, upload, file routes) against its cookie
table only (``get_current_user`` in ``routes.py``). A caller whose header is right is therefore
given a cookie for the rest of the request: a token minted into gradio's own table, ``app.tokens``,
once per user. gradio then sees that caller as logged in as that user, as after the form.

``headers(app)`` gives gradio's in-process loopback clients (its MCP server, our OpenAI routes)
the same kind of cookie, under an internal user name, so their calls pass the login too.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
import secrets
from typing import Any, MutableMapping

Scope = MutableMapping[str, Any]

#: The user name gradio sees for calls the app makes to itself (the MCP server's client, the
#: OpenAI routes' client). It cannot log in through the form: no password is ever set for it.
LOOPBACK_USER = "cascade-studio-loopback"
#: The gradio 6.31 cookie read over plain http (``access-token-unsecure-<cookie_id>``).
COOKIE = "access-token-unsecure-{}"
#: What a refused header is told, so that a program's user knows the shape to send.
HOW = "send the login as 'Authorization: Bearer USER:PASS' (the openai client: api_key='USER:PASS') or HTTP Basic"


class Malformed(ValueError):
    """An ``Authorization`` header that is not a login of either shape; the message says why."""


def authorization(scope: Scope) -> tuple[str, str] | None:
    """The (user, password) of the request's ``Authorization`` header; None when it has none.

    Raises:
        Malformed: a header of another scheme, or one that is not ``USER:PASS``.
    """
    raw = next((value for key, value in scope.get("headers", []) if key.lower() == b"authorization"), None)
    if raw is None:
        return None
    scheme, _, value = raw.decode("latin-1").strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as error:
            raise Malformed(f"the Basic credentials are not base64 of USER:PASS; {HOW}") from error
    elif scheme.lower() != "bearer":
        raise Malformed(f"the Authorization scheme {scheme[:20]!r} is not Bearer or Basic; {HOW}")
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise Malformed(f"the credentials are not USER:PASS; {HOW}")
    return user, password


async def accepts(auth: Any, user: str, password: str) -> bool:
    """Whether gradio's configured ``auth`` (a dict of logins, or a callable) lets ``user`` in."""
    if callable(auth):
        verdict = auth(user, password)
        return bool(await verdict if inspect.isawaitable(verdict) else verdict)
    expected = auth.get(user)
    return expected is not None and hmac.compare_digest(password.encode(), str(expected).encode())


def token_for(app: Any, user: str) -> str:
    """gradio's login token for ``user``: minted into ``app.tokens`` once, again after a logout."""
    minted: dict[str, str] = app.__dict__.setdefault("_studio_header_tokens", {})
    token = minted.get(user)
    if token is None or app.tokens.get(token) != user:
        token = secrets.token_urlsafe(16)
        app.tokens[token] = user
        minted[user] = token
    return token


def logged_in_as(app: Any, scope: Scope, user: str) -> Scope:
    """``scope`` with gradio's login cookie for ``user`` added, for gradio's own checks."""
    cookie = f"{COOKIE.format(app.cookie_id)}={token_for(app, user)}".encode()
    headers = [(key, value) for key, value in scope.get("headers", []) if key.lower() != b"cookie"]
    old = [value for key, value in scope.get("headers", []) if key.lower() == b"cookie"]
    return {**scope, "headers": [*headers, (b"cookie", b"; ".join([*old, cookie]))]}


def headers(app: Any) -> dict[str, str]:
    """Headers that log the app's own loopback client in; empty when the app has no login."""
    if app.auth is None:
        return {}
    return {"cookie": f"{COOKIE.format(app.cookie_id)}={token_for(app, LOOPBACK_USER)}"}
