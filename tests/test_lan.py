"""LAN sharing: --listen never serves without a login unless --no-auth; wrong logins get nothing.

Every check runs against the real app in-process, so the login gradio enforces is the one tested:
the config, the API description, uploads, the queue, the one-shot call API, files and
gradio_client's own login all have to refuse a stranger and a wrong password. Failed logins are
throttled per client address (``tabs/web_guard.LOGIN_LIMIT``, 5 a minute), so the sessions below
come from addresses of their own in 127.0.0.0/8, as separate machines would; Linux answers on the
whole block.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from gradio_client import Client
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import app
from tabs.web_guard import LoginRequired

#: A string only the app's own page carries (the header Markdown), never gradio's login page.
APP_TEXT = "Stable Cascade weights are licensed"
#: Loopback addresses handed to sessions in turn (127.0.0.10 and up), one per session.
SOURCES = (f"127.0.{n // 250}.{10 + n % 250}" for n in itertools.count())


def from_address(url: str, address: str | None = None) -> httpx.Client:
    """An HTTP session whose connections come from ``address`` (by default one no other uses)."""
    return httpx.Client(base_url=url, timeout=30,
                        transport=httpx.HTTPTransport(local_address=address or next(SOURCES)))


def login(url: str, user: str, password: str, address: str | None = None) -> httpx.Client:
    """An HTTP session that has posted the login form (its cookie is kept when it succeeds)."""
    session = from_address(url, address)
    session.post("/login", data={"username": user, "password": password})
    return session


def bound_addresses(url: str) -> set[str]:
    """The addresses this process listens on at the URL's port."""
    port = urlsplit(url).port
    return {c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def refusals(url: str, session: httpx.Client | None = None) -> dict[str, int]:
    """Status of each protected route for a caller without a valid login."""
    http = session or httpx.Client(base_url=url, timeout=30)
    status = {
        "GET /config": http.get("/config").status_code,
        "GET /gradio_api/info": http.get("/gradio_api/info").status_code,
        "GET /gradio_api/openapi.json": http.get("/gradio_api/openapi.json").status_code,
        "POST /gradio_api/upload": http.post("/gradio_api/upload", files={"files": ("a.txt", b"x")}).status_code,
        "POST /gradio_api/call/status": http.post("/gradio_api/call/status", json={"data": []}).status_code,
        "POST /gradio_api/run/status": http.post("/gradio_api/run/status", json={"data": []}).status_code,
        "POST /gradio_api/queue/join": http.post("/gradio_api/queue/join", json={
            "data": [], "fn_index": 0, "session_hash": "stranger"}).status_code,
        "GET /gradio_api/queue/data": http.get("/gradio_api/queue/data", params={"session_hash": "x"}).status_code,
        "GET /gradio_api/file=": http.get(f"/gradio_api/file={Path(app.__file__).resolve()}").status_code,
    }
    page = http.get("/")
    status["GET / (app content)"] = 401 if APP_TEXT not in page.text else 200
    return status


def assert_refused(url: str, tally: Any, check: str, session: httpx.Client | None = None) -> None:
    status = refusals(url, session)
    assert all(code == 401 for code in status.values()), status
    tally.add("security", check, attempts=len(status), refused=len(status))


def test_listen_without_auth_generates_a_password_and_rejects_strangers(
        launch_app: Callable[..., str], caplog: pytest.LogCaptureFixture, tally: Any) -> None:
    with caplog.at_level(logging.INFO, logger="cascade_studio"):
        url = launch_app("--listen")
    printed = re.search(r"User: (\S+)\s+Password: (\S+)", caplog.text)
    assert printed, "the generated password must be printed in the console"
    user, password = printed.groups()
    assert len(password) >= 16 and "On your network: http://" in caplog.text
    assert bound_addresses(url) == {"0.0.0.0"}

    assert_refused(url, tally, "listen: no login")
    assert_refused(url, tally, "listen: wrong password", login(url, user, "wrong-password"))
    assert_refused(url, tally, "listen: wrong user", login(url, "admin", password))
    assert_refused(url, tally, "listen: empty login", login(url, "", ""))
    assert httpx.post(url + "login", data={"username": user, "password": "nope"}, timeout=30).status_code == 400

    for auth in (None, (user, "wrong-password"), ("admin", password)):
        with pytest.raises(Exception):
            Client(url, auth=auth, verbose=False).predict(api_name="/status")
        tally.add("security", "listen: gradio_client", attempts=1, refused=1)

    assert login(url, user, password).get("/config").status_code == 200
    assert APP_TEXT in login(url, user, password).get("/").text
    assert Client(url, auth=(user, password), verbose=False).predict(api_name="/status")["preset"] == "tiny"


def test_auth_flags_and_auth_file(launch_app: Callable[..., str], tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture, tally: Any) -> None:
    logins = tmp_path / "logins.txt"
    logins.write_text("# one user:pass a line\ncarol:pass:with:colons\n\ndave:d4ve\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="cascade_studio"):
        url = launch_app("--listen", "--auth", "alice:s3cret", "--auth", "bob:b0b", "--auth-file", str(logins))
    assert "Password:" not in caplog.text  # the user chose the logins: nothing generated

    assert_refused(url, tally, "auth flags: no login")
    for user, password in (("alice", "b0b"), ("bob", "s3cret"), ("carol", "pass"), ("dave", "D4VE"), ("eve", "x")):
        assert_refused(url, tally, "auth flags: wrong login", login(url, user, password))
    for user, password in (("alice", "s3cret"), ("bob", "b0b"), ("carol", "pass:with:colons"), ("dave", "d4ve")):
        assert login(url, user, password).get("/config").status_code == 200
    assert Client(url, auth=("dave", "d4ve"), verbose=False).predict(api_name="/status")["preset"] == "tiny"


def test_no_auth_is_an_explicit_opt_out(launch_app: Callable[..., str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cascade_studio"):
        url = launch_app("--listen", "--no-auth")
    assert "WITHOUT a login (--no-auth)" in caplog.text and "Password:" not in caplog.text
    assert bound_addresses(url) == {"0.0.0.0"}
    assert httpx.get(url + "config", timeout=30).status_code == 200
    assert Client(url, verbose=False).predict(api_name="/status")["preset"] == "tiny"


def test_without_listen_it_binds_loopback_only(launch_app: Callable[..., str]) -> None:
    url = launch_app()
    assert bound_addresses(url) == {"127.0.0.1"}
    assert httpx.get(url + "config", timeout=30).status_code == 200  # this machine only: no login needed
    port = urlsplit(url).port
    for address in app.lan_addresses():  # none on some CI machines; then the bind check above stands alone
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{address}:{port}/config", timeout=5)


@pytest.mark.parametrize(("argv", "environ", "needs_login"), [
    (["--listen"], {}, True),
    ([], {"STUDIO_LISTEN": "1"}, True),
    (["--host", "0.0.0.0"], {}, True),
    (["--host", "::"], {}, True),
    (["--host", "my-desktop.local"], {}, True),
    (["--share"], {}, True),  # a share link is public on the internet
    (["--share", "--no-auth"], {}, False),
    (["--listen", "--no-auth"], {}, False),
    ([], {"STUDIO_LISTEN": "1", "STUDIO_NO_AUTH": "1"}, False),
    ([], {}, False),
    (["--host", "localhost"], {}, False),
    (["--host", "127.0.0.2"], {}, False),
    (["--listen", "--host", "127.0.0.1"], {}, True),  # --listen promises a login, even on loopback
    (["--listen", "--host", "localhost"], {}, True),
    (["--listen", "--host", "127.0.0.1", "--no-auth"], {}, False),
])
def test_every_way_to_be_reachable_needs_a_login(argv: list[str], environ: dict[str, str], needs_login: bool,
                                                 tally: Any) -> None:
    auth = app.resolve_auth(app.parse_args(argv, environ=environ))
    assert bool(auth) == needs_login, auth
    tally.add("security", "reachable needs login", attempts=1, refused=int(bool(auth) == needs_login))


def test_listen_on_loopback_asks_for_a_login_and_says_why(launch_app: Callable[..., str],
                                                          caplog: pytest.LogCaptureFixture, tally: Any) -> None:
    with caplog.at_level(logging.INFO, logger="cascade_studio"):
        url = launch_app("--listen", "--host", "127.0.0.1")
    assert "--listen with --host 127.0.0.1: only this machine can connect, but a login is asked for" in caplog.text
    printed = re.search(r"User: (\S+)\s+Password: (\S+)", caplog.text)
    assert printed, "the generated password must be printed in the console"
    assert bound_addresses(url) == {"127.0.0.1"} and "On your network" not in caplog.text
    assert_refused(url, tally, "listen on loopback: no login")
    assert APP_TEXT in login(url, *printed.groups()).get("/").text


def test_failed_logins_are_throttled_per_address(launch_app: Callable[..., str],
                                                 caplog: pytest.LogCaptureFixture, tally: Any) -> None:
    """The sixth wrong try in a row from one address is refused with 429, a right one from there
    too until the window passes; another address logs in at once, and parallel tries cannot
    outrun the count."""
    with caplog.at_level(logging.INFO, logger="tabs.web_guard"):
        url = launch_app("--listen", "--auth", "alice:s3cret")
    guesser, other = next(SOURCES), next(SOURCES)
    with from_address(url, guesser) as http:
        started = time.monotonic()
        for _ in range(5):
            assert http.post("/login", data={"username": "alice", "password": "guess"}).status_code == 400
        assert time.monotonic() - started < 10  # the first five are not slowed down
        for password in ("guess", "s3cret"):  # the sixth, wrong or right, is not even checked
            refused = http.post("/login", data={"username": "alice", "password": password})
            assert refused.status_code == 429, refused.text
            assert refused.json()["detail"].startswith(f"Too many failed logins from {guesser}: at most 5 a minute")
            assert 0 < int(refused.headers["retry-after"]) <= 60
            assert "access-token" not in refused.headers.get("set-cookie", "")
            tally.add("security", "throttle: sixth login", attempts=1, refused=1)
        assert http.get("/config").status_code == 401
    assert f"failed logins from {guesser} reached 5 a minute" in caplog.text

    with from_address(url, other) as http:  # another machine is not slowed down
        assert http.post("/login", data={"username": "alice", "password": "s3cret"}).status_code == 200
        assert http.get("/config").status_code == 200
    assert Client(url, auth=("alice", "s3cret"), verbose=False).predict(api_name="/status")["preset"] == "tiny"

    burst = next(SOURCES)  # twenty guesses at once still get five answers

    def guess(_: int) -> int:
        with from_address(url, burst) as http:
            return http.post("/login", data={"username": "alice", "password": "guess"}).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(guess, range(20)))
    assert sorted(codes) == [400] * 5 + [429] * 15, codes
    tally.add("security", "throttle: parallel guesses", attempts=len(codes), refused=codes.count(429))



def test_wrong_authorization_headers_count_against_the_same_throttle(launch_app: Callable[..., str],
                                                                   tally: Any) -> None:
    """A program's login (``Authorization``) is throttled like the form's: five wrong tries, then 429."""
    url = launch_app("--listen", "--auth", "alice:s3cret")
    guesser = next(SOURCES)
    with from_address(url, guesser) as http:
        for _ in range(5):
            refused = http.get("/config", headers={"Authorization": "Bearer alice:guess"})
            assert refused.status_code == 401 and "wrong user or password" in refused.text
        for header in ("Bearer alice:guess", "Bearer alice:s3cret"):  # the sixth is not even checked
            refused = http.get("/config", headers={"Authorization": header})
            assert refused.status_code == 429 and "Too many failed logins" in refused.text, refused.text
            tally.add("security", "throttle: sixth header login", attempts=1, refused=1)
        # The form shares the count: a right password from there waits too.
        assert http.post("/login", data={"username": "alice", "password": "s3cret"}).status_code == 429
    with from_address(url) as http:
        assert http.get("/config", headers={"Authorization": "Bearer alice:s3cret"}).status_code == 200

class FakeGradioApp(Starlette):
    """What ``LoginRequired`` reads of gradio's App: its logins, tokens and cookie name."""

    auth = {"alice": "right"}
    tokens: dict[str, str] = {}
    cookie_id = "test"


async def fake_login(request: Request) -> JSONResponse:
    """gradio 6.31's answers: 200 for the right password, 400 for a wrong one."""
    form = await request.form()
    right = form.get("password") == FakeGradioApp.auth.get(str(form.get("username")))
    return JSONResponse({"success": True} if right else {"detail": "Incorrect credentials."},
                        status_code=200 if right else 400)


def test_the_throttle_forgets_failures_once_they_leave_its_window() -> None:
    guarded = FakeGradioApp(routes=[Route("/login", fake_login, methods=["POST"])],
                            middleware=[Middleware(LoginRequired, auth_message="log in",
                                                   login_limit="2 per 2 seconds")])
    guesser, other = TestClient(guarded, client=("10.0.0.7", 5000)), TestClient(guarded, client=("10.0.0.8", 5000))
    wrong, right = {"username": "alice", "password": "wrong"}, {"username": "alice", "password": "right"}
    assert [guesser.post("/login", data=wrong).status_code for _ in range(3)] == [400, 400, 429]
    assert guesser.post("/login", data=right).status_code == 429
    assert other.post("/login", data=right).status_code == 200
    time.sleep(int(guesser.post("/login", data=right).headers["retry-after"]) + 0.1)
    assert guesser.post("/login", data=right).status_code == 200
    assert guesser.post("/login", data=wrong).status_code == 400  # counting starts again
    assert guesser.get("/anything").status_code == 401  # and every other route needs the login
