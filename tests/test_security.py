"""What the app serves: outputs and the user's own uploads, nothing else; uploads capped; no remote code.

Every file-serving route gradio 6.31 has (``gradio/routes.py``: ``/gradio_api/file=``, its deprecated
``/gradio_api/file/``, ``/gradio_api/proxy=``, ``/static``, ``/assets``, ``/svelte``,
``/gradio_api/custom_component``, the media-stream and run-history routes, deep links) is tried with
raw ``..``, encoded and double-encoded dots and slashes, backslashes, absolute paths, a NUL byte,
URLs back to the server itself, and symlinks placed inside the outputs and the upload cache that
point at a secret outside them. Requests go out through ``http.client`` because httpx would
normalise the ``..`` segments away before they reach the server.

With a login set, every route but the login page and its files refuses a caller without the login
cookie (``tabs/web_guard.LoginRequired``): the routes are read from the app's own route table, so a
route a new gradio adds is probed too. ``/gradio_api/cancel`` and ``/gradio_api/reset``, which
gradio 6.31 leaves open, are tried with no cookie, a forged one and a logged-out one.
"""

from __future__ import annotations

import ast
import contextlib
import http.client
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
from tests.serving import serve_tiny

ROOT = Path(__file__).resolve().parent.parent
#: The packages the app runs; none may ask transformers or diffusers to run a repository's own code.
SOURCES = [ROOT / "app.py", *sorted((ROOT / "tabs").rglob("*.py")), *sorted((ROOT / "backends").rglob("*.py")),
           *sorted((ROOT / "bench").rglob("*.py"))]
#: gradio's own figure for ``max_file_size="25mb"`` (its units are binary: 1 MB = 1024² bytes).
LIMIT_BYTES = 25 * 1024 * 1024
USER, PASSWORD = "alice", f"s3cret-{secrets.token_hex(4)}"
#: What a caller without the login may load: the login page, what it needs to render (measured in
#: Chromium) and submit, the icons browsers ask for, and the queue's start-up call ``launch()`` makes.
PUBLIC_ROUTES = {("GET", "/"), ("HEAD", "/"), ("POST", "/login"), ("POST", "/login/"), ("GET", "/theme.css"),
                 ("GET", "/gradio_api/theme.css"), ("GET", "/assets/{path}"), ("GET", "/static/{path}"),
                 ("GET", "/svelte/{path}"), ("GET", "/favicon.ico"), ("GET", "/manifest.json"),
                 ("GET", "/robots.txt"), ("GET", "/pwa_icon"), ("GET", "/pwa_icon/{size}"),
                 ("GET", "/gradio_api/startup-events")}


@dataclass
class Site:
    """A served app and the files around it, some of which it must never hand out."""

    url: str
    port: int
    root: Path
    outputs: Path
    uploads: Path
    marker: str
    secret: Path
    secret_png: Path
    models_secret: Path
    model_file: Path
    output_png: Path


@pytest.fixture(scope="module")
def site(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("security")
    marker = f"TOP-SECRET-{secrets.token_hex(8)}"
    secret = root / "secret.txt"
    secret.write_text(marker)
    (root / "private").mkdir()
    (root / "private" / "secret.txt").write_text(marker)
    (root / "outputs-private").mkdir()  # shares the outputs' name as a prefix
    (root / "outputs-private" / "secret.txt").write_text(marker)
    secret_png = root / "secret.png"
    Image.fromarray((np.random.default_rng(9).random((64, 64, 3)) * 255).astype(np.uint8)).save(secret_png)
    outputs, uploads = root / "outputs", root / "gradio"
    outputs.mkdir()
    (outputs / "link.txt").symlink_to(secret)
    (outputs / "link.png").symlink_to(secret_png)
    (outputs / "linkdir").symlink_to(root / "private", target_is_directory=True)
    uploads.mkdir()
    (uploads / "link.txt").symlink_to(secret)
    models_secret = models_dir / f"security-probe-{secrets.token_hex(4)}.txt"
    models_secret.write_text(marker)

    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(uploads))  # this app's upload cache, not /tmp/gradio
        try:
            with serve_tiny(models_dir, outputs) as (_, url):
                client = Client(url, verbose=False)
                _, info = client.predict("a cat", "", 256, 256, 2, 2, 4.0, 0.0, 1, 3, api_name="/generate_image")
                model_file = next(p for p in app.cache_dir(models_dir).rglob("config.json"))
                yield Site(url, urlsplit(url).port, root, outputs, uploads, marker, secret, secret_png,
                           models_secret, model_file, Path(info["files"][0]))
        finally:
            models_secret.unlink()


def raw_get(site: Site, target: str) -> tuple[int, bytes]:
    """GET ``target`` exactly as written: no normalising of ``..``, no re-encoding."""
    connection = http.client.HTTPConnection("127.0.0.1", site.port, timeout=30)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def leaked(site: Site, body: bytes) -> bool:
    """Whether a response carries any of the files the app must never serve."""
    return (site.marker.encode() in body or b"root:x:0:0" in body or site.secret_png.read_bytes() in body
            or site.model_file.read_bytes() in body)


def absolute_paths(site: Site) -> list[str]:
    """Ways to name a file outside the outputs and upload cache, for the routes that take a path."""
    out, secret, up = str(site.outputs), str(site.secret), str(site.uploads)
    return [
        secret, f"{out}/../secret.txt", f"{out}/./../secret.txt", f"{out}/%2e%2e/secret.txt",
        f"{out}/%2E%2E/secret.txt", f"{out}/%252e%252e/secret.txt", f"{out}/..%2fsecret.txt",
        f"{out}/..%252fsecret.txt", f"{out}%2F..%2Fsecret.txt", f"{out}\\..\\secret.txt",
        f"{out}/{site.output_png.parent.name}/../../secret.txt", f"{out}/link.txt", f"{out}/link.png",
        f"{out}/linkdir/secret.txt", f"{out}-private/secret.txt", f"{up}/link.txt", f"{up}/../secret.txt",
        str(site.models_secret), str(site.model_file), "/etc/passwd", "//etc/passwd", "/./etc/passwd",
        "%2Fetc%2Fpasswd", "%252Fetc%252Fpasswd", "../../../../../../../../etc/passwd",
        "..%2F..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd", f"{out}/../../../../../../../../etc/passwd",
        f"{secret}%00.png", f"file://{secret}", f"file:{secret}",
        f"http://127.0.0.1:{site.port}/gradio_api/file={secret}",
        f"http://localhost:{site.port}/gradio_api/file=/etc/passwd",
    ]


def relative_paths(site: Site) -> list[str]:
    """Ways to climb out of a route's own folder (``/static``, ``/assets``, ``/svelte``)."""
    climb = "../" * 12
    return [f"{climb}etc/passwd", "%2e%2e/" * 12 + "etc/passwd", "..%2f" * 12 + "etc/passwd",
            "%252e%252e%252f" * 12 + "etc/passwd", "..\\" * 12 + "etc\\passwd", f"/{site.secret}",
            f"{climb}{str(site.secret).lstrip('/')}", "....//" * 12 + "etc/passwd", f"{site.secret}"]


def probes(site: Site) -> list[tuple[str, str]]:
    """(route, request target) for every file-serving route and every way in."""
    found = []
    for path in absolute_paths(site):
        found += [("/gradio_api/file=", f"/gradio_api/file={path}"), ("/gradio_api/file/", f"/gradio_api/file/{path}"),
                  ("/file= (gradio 4)", f"/file={path}"), ("/gradio_api/proxy=", f"/gradio_api/proxy={path}"),
                  ("/gradio_api/stream/…/playlist-file", f"/gradio_api/stream/{path}/0/1/playlist-file")]
    for path in relative_paths(site):
        found += [(route, f"{route}{path}") for route in ("/static/", "/assets/", "/svelte/")]
        found += [("/gradio_api/custom_component/", f"/gradio_api/custom_component/x/client/{path}/index.js"),
                  ("/gradio_api/run-history/…/assets/", f"/gradio_api/run-history/records/x/{path}/assets/y"),
                  ("/?deep_link=", f"/?deep_link={path}"), ("/config?deep_link=", f"/config?deep_link={path}")]
    found += [("/favicon.ico", "/favicon.ico"), ("/pwa_icon/", "/pwa_icon/64"), ("/manifest.json", "/manifest.json")]
    return found


def test_no_route_serves_a_file_outside_outputs_and_uploads(site: Site, tally: Any) -> None:
    leaks, served, errors = [], [], []
    tried = probes(site)
    for route, target in tried:
        status, body = raw_get(site, target)
        if leaked(site, body):
            leaks.append(target)
        # The pages and icons answer 200 with their own content; a path route must refuse.
        if status == 200 and route not in ("/?deep_link=", "/config?deep_link=", "/favicon.ico", "/pwa_icon/",
                                           "/manifest.json"):
            served.append(target)
        if status >= 500 and not (route == "/gradio_api/proxy=" and "%00" in target):
            errors.append((status, target))
        tally.add("security", f"route {route}", attempts=1, refused=int(not leaked(site, body)))
    assert not leaks, leaks
    assert not served, served
    # Refusals are clean 4xx answers, not crashes. One known exception, gradio 6.31: /proxy= passes
    # a URL with a NUL byte to httpx.URL unguarded, and the InvalidURL becomes a 500 (nothing read).
    assert not errors, errors
    assert len(tried) > 200


def test_outputs_and_own_uploads_are_served(site: Site) -> None:
    status, body = raw_get(site, f"/gradio_api/file={site.output_png}")
    assert status == 200 and body == site.output_png.read_bytes()
    visible = site.outputs / "visible.txt"  # the leak detector above does see a served secret
    visible.write_text(site.marker)
    status, body = raw_get(site, f"/gradio_api/file={visible}")
    assert status == 200 and leaked(site, body)
    visible.unlink()
    data = b"my own upload " + secrets.token_bytes(16)
    response = httpx.post(f"{site.url}gradio_api/upload", files={"files": ("mine.txt", data)}, timeout=30)
    (uploaded,) = response.json()
    assert Path(uploaded).resolve().is_relative_to(site.uploads.resolve())
    status, body = raw_get(site, f"/gradio_api/file={uploaded}")
    assert status == 200 and body == data


def test_outputs_above_the_models_keep_the_models_and_hub_token_private(
        launch_app: Callable[..., str], tmp_path: Path, tally: Any) -> None:
    """``--outputs`` set to a parent folder (here the models' own parent) still serves results, but
    never the weights, the tiny-model cache or the hub token: ``app.private_paths`` blocks them."""
    models = tmp_path / "models"
    (models / "cascade-studio").mkdir(parents=True)
    (models / "weights.txt").write_text("weights")
    (models / "cascade-studio" / "config.json").write_text("{}")
    (tmp_path / "result.txt").write_text("a result")
    url = launch_app("--outputs", str(tmp_path), "--models-dir", str(models))
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get(f"gradio_api/file={tmp_path / 'result.txt'}").text == "a result"
        for path in (models / "weights.txt", models / "cascade-studio" / "config.json"):
            assert http.get(f"gradio_api/file={path}").status_code == 403
            tally.add("security", "outputs above models", attempts=1, refused=1)

    from huggingface_hub import constants

    blocked = app.private_paths(app.parse_args(["--outputs", str(Path.home())], environ={}))
    assert str(Path(constants.HF_TOKEN_PATH).parent.resolve()) in blocked
    assert str(Path(constants.HF_HUB_CACHE).resolve()) in blocked
    # An outputs folder inside a private one must stay servable, so that folder is not blocked.
    inside = app.parse_args(["--outputs", str(models / "out"), "--models-dir", str(models)], environ={})
    assert str(models.resolve()) not in app.private_paths(inside)


def call_events(site: Site, api_name: str, data: list[Any]) -> str:
    """Run an endpoint over the raw HTTP API and return its event stream's text."""
    with httpx.Client(base_url=site.url, timeout=60) as http:
        event_id = http.post(f"gradio_api/call/{api_name}", json={"data": data}).json()["event_id"]
        return http.get(f"gradio_api/call/{api_name}/{event_id}").text


@pytest.mark.parametrize("name", ["secret.png", "outputs/link.png", "gradio/link.txt"])
def test_api_file_inputs_must_be_uploads(site: Site, name: str, tally: Any) -> None:
    """A FileData input that names a server path is refused, not read: a request cannot turn a
    private picture into a video or a variation it then downloads."""
    picture = {"path": str(site.root / name), "meta": {"_type": "gradio.FileData"}}
    for api_name, rest in (("generate_video", [4, 8, 127, 0.02, 2, 0, 5]),
                           ("image_variation", ["", "", 256, 256, 1, 5])):
        events = call_events(site, api_name, [picture, *rest])
        assert "event: error" in events and "event: complete" not in events, events
        tally.add("security", "api file input", attempts=1, refused=1)


def upload(site: Site, size: int) -> httpx.Response:
    return httpx.post(f"{site.url}gradio_api/upload", files={"files": ("big.bin", b"\0" * size)}, timeout=60)


def cache_files(site: Site) -> set[Path]:
    return {p for p in site.uploads.rglob("*") if p.is_file() or p.is_symlink()}


def test_upload_limit(site: Site, tmp_path: Path, tally: Any) -> None:
    assert app.MAX_UPLOAD == "25mb"
    before = cache_files(site)
    for size in (LIMIT_BYTES + 1, 26 * 1024 * 1024):
        response = upload(site, size)
        assert response.status_code == 413, response.text
        assert "maximum allowed size" in response.text
        tally.add("security", "upload over 25 MB", attempts=1, refused=1)
    assert cache_files(site) == before  # nothing of the refused uploads is kept

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (26 * 1024 * 1024))
    with pytest.raises(Exception, match="exceeds the maximum file size|413|maximum allowed size"):
        Client(site.url, verbose=False).predict(handle_file(str(big)), "", "", 256, 256, 1, 5,
                                                api_name="/image_variation")
    assert cache_files(site) == before

    accepted = upload(site, 1024 * 1024)
    assert accepted.status_code == 200
    assert Path(accepted.json()[0]).stat().st_size == 1024 * 1024


def trust_remote_code_uses(source: str) -> tuple[list[str], list[int]]:
    """The values a module gives ``trust_remote_code`` (as a keyword or a dict key), and the lines
    of any other way of naming it in code (a variable, an attribute, ``kwargs["…"]``, ``setattr``)."""
    values, other = [], []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
            values.append(ast.unparse(node.value))
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "trust_remote_code":
                    values.append(ast.unparse(value))
                    key.value = "checked"  # not counted again below
        elif isinstance(node, ast.Name) and node.id == "trust_remote_code":
            other.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "trust_remote_code":
            other.append(node.lineno)
        elif isinstance(node, ast.Constant) and node.value == "trust_remote_code":
            other.append(node.lineno)
    return values, other


def test_no_trust_remote_code_anywhere(tally: Any) -> None:
    assert len(SOURCES) > 20
    for path in SOURCES:
        values, other = trust_remote_code_uses(path.read_text(encoding="utf-8"))
        assert all(value == "False" for value in values), (path, values)
        assert not other, (path, other)
        tally.add("security", "trust_remote_code", attempts=1, refused=1)
    for preset in (ROOT / "presets").rglob("*.yaml"):
        assert "trust_remote_code" not in preset.read_text(encoding="utf-8"), preset


@dataclass
class Guarded:
    """A served app with a login (``--auth``), and its Studio."""

    url: str
    studio: Any


@pytest.fixture(scope="module")
def guarded(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    with serve_tiny(models_dir, tmp_path_factory.mktemp("guarded"), "--auth", f"{USER}:{PASSWORD}") as (studio, url):
        yield Guarded(url, studio)


@contextlib.contextmanager
def logged_in_session(url: str) -> Iterator[httpx.Client]:
    """An HTTP session that holds the login cookie; closed on leaving."""
    with httpx.Client(base_url=url, timeout=60) as session:
        assert session.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 200
        yield session


def assert_not_authenticated(response: httpx.Response) -> None:
    request = response.request
    assert response.status_code == 401, (request.method, request.url, response.status_code, response.text[:200])
    if request.method != "HEAD":  # a HEAD answer has no body
        assert response.json()["detail"]["error"] == "Not authenticated"


def test_cancel_and_reset_need_the_login(guarded: Guarded, tally: Any) -> None:
    cancel = {"session_hash": "someone-else", "fn_index": 0, "event_id": "their-job"}
    calls = [("gradio_api/cancel", cancel), ("gradio_api/reset", {"event_id": "their-job"}),
             ("gradio_api/reset/", {"event_id": "their-job"})]
    with logged_in_session(guarded.url) as session:
        token = dict(session.cookies)
        for route, body in calls:
            assert session.post(route, json=body).json() == {"success": True}  # with the login: as before
        session.get("/logout", follow_redirects=False)
    forged = {name: "forged-token" for name in token}
    for cookies in ({}, forged, token):  # none, forged, and that of a session that logged out
        for route, body in calls:
            assert_not_authenticated(httpx.post(f"{guarded.url}{route}", json=body, cookies=cookies, timeout=30))
            tally.add("security", f"login: POST /{route}", attempts=1, refused=1)


def chat_events(session: httpx.Client, session_hash: str) -> Iterator[dict[str, Any]]:
    """The queue's messages for one browser-style session, as they come."""
    with session.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                yield json.loads(line[len("data:"):])


def test_a_logged_in_client_cancels_its_own_job_and_a_stranger_cannot(guarded: Guarded) -> None:
    with logged_in_session(guarded.url) as owner:
        chat = next(d["id"] for d in owner.get("/config").json()["dependencies"] if d.get("api_name") == "chat")
        session_hash = secrets.token_hex(6)
        # The browser's call: all eight inputs of the event, its two State values included.
        job = owner.post("/gradio_api/queue/join", json={
            "data": ["Tell me a long story", [], "", 0, 1.0, 900, None, None], "fn_index": chat,
            "session_hash": session_hash}).json()["event_id"]
        cancel = {"session_hash": session_hash, "fn_index": chat, "event_id": job}
        generating, cancelled_at, last = 0, 0.0, {}
        for message in chat_events(owner, session_hash):
            if message["msg"] == "process_generating":
                generating += 1
                if generating == 3:  # a stranger who knows the ids is refused, and the job goes on
                    assert_not_authenticated(httpx.post(f"{guarded.url}gradio_api/cancel", json=cancel, timeout=30))
                if generating == 6:
                    stop = httpx.post(f"{guarded.url}gradio_api/cancel", json=cancel, cookies=dict(owner.cookies),
                                      timeout=30)
                    assert stop.status_code == 200 and stop.json() == {"success": True}
                    cancelled_at = time.monotonic()
            if message["msg"] == "process_completed":
                last = message
                break
    assert generating >= 6, "the job stopped before its owner cancelled it"
    # gradio ends a cancelled job with an empty output; a finished one carries the reply.
    assert last["success"] and last["output"] == {}, last
    assert time.monotonic() - cancelled_at < 10
    deadline = time.monotonic() + 10
    while guarded.studio.manager.component("stablelm.model").in_use and time.monotonic() < deadline:
        time.sleep(0.05)
    assert guarded.studio.manager.component("stablelm.model").in_use == 0


def routes(session: httpx.Client) -> set[tuple[str, str]]:
    """(method, path) of every route of the app, from FastAPI's own table (``/openapi.json``)."""
    paths = session.get("/openapi.json").json()["paths"]
    return {(method.upper(), path) for path, item in paths.items() for method in item
            if method in ("get", "head", "post", "put", "patch", "delete")} | {("GET", "/openapi.json")}


def test_every_route_but_the_login_page_needs_the_login(guarded: Guarded, tally: Any) -> None:
    with logged_in_session(guarded.url) as session:
        table = routes(session)
    assert {("POST", "/gradio_api/cancel"), ("POST", "/gradio_api/reset"), ("GET", "/config")} <= table
    assert len(table) > 60
    assert {("GET", "/"), ("POST", "/login")} <= PUBLIC_ROUTES & table
    answered = []
    with httpx.Client(base_url=guarded.url, timeout=30) as stranger:
        for method, path in sorted(table):
            target = re.sub(r"\{[^}]+\}", "x", path)
            response = stranger.request(method, target, json={} if method != "GET" else None)
            if (method, path) in PUBLIC_ROUTES:
                # Gradio's own files and the login form: nothing of the app, nor its API.
                assert "Stable Cascade weights are licensed" not in response.text
                assert "negative_prompt" not in response.text and "generate_image" not in response.text
                answered.append(target)
                continue
            assert_not_authenticated(response)
            tally.add("security", "login: every route", attempts=1, refused=1)
    assert "/" in answered
    with logged_in_session(guarded.url) as session:  # the login page's API description is only for users
        assert "negative_prompt" in session.get("/").text



def test_programs_log_in_with_an_authorization_header(guarded: Guarded, tally: Any) -> None:
    """Bearer USER:PASS or HTTP Basic opens every route a cookie does, the queue's included."""
    import base64

    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for header in (f"Bearer {USER}:{PASSWORD}", f"Basic {basic}"):
        config = httpx.get(f"{guarded.url}config", headers={"Authorization": header}, timeout=30)
        assert config.status_code == 200 and "dependencies" in config.json()
        # gradio's own checks (the queue's join) see the caller as logged in as that user.
        client = Client(guarded.url, headers={"Authorization": header}, verbose=False)
        assert client.predict(api_name="/status")["preset"] == "tiny"
    for header in (f"Bearer {USER}:wrong", f"Bearer {PASSWORD}", "Basic not-base64!", f"Token {USER}:{PASSWORD}",
                   f"Bearer nobody:{PASSWORD}"):
        # From an address of its own: its five failures must not throttle this module's other logins.
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.77"), timeout=30) as stranger:
            refused = stranger.get(f"{guarded.url}config", headers={"Authorization": header})
        assert refused.status_code == 401, (header, refused.text)
        assert "Authorization: Bearer USER:PASS" in refused.json()["detail"]["error"]
        assert "dependencies" not in refused.text
        tally.add("security", "login: wrong Authorization header", attempts=1, refused=1)

def test_raw_api_checks_come_after_the_login(guarded: Guarded) -> None:
    """A stranger's short call is refused for the login, not answered with the endpoint's inputs."""
    response = httpx.post(f"{guarded.url}gradio_api/call/generate_image", json={"data": []}, timeout=30)
    assert_not_authenticated(response)
    assert "negative_prompt" not in response.text
    with logged_in_session(guarded.url) as session:
        response = session.post("gradio_api/call/generate_image", json={"data": []})
    assert response.status_code == 422 and "negative_prompt" in response.json()["error"]


def test_the_queue_wait_route_needs_the_login(guarded: Guarded, tally: Any) -> None:
    """The page's own route (``tabs/queue_wait.py``) is not in FastAPI's table, so it is tried here."""
    for route in ("studio_api/queue_wait", "studio_api/queue_wait/"):
        assert_not_authenticated(httpx.get(f"{guarded.url}{route}", cookies={}, timeout=30))
        tally.add("security", f"login: GET /{route}", attempts=1, refused=1)
    with logged_in_session(guarded.url) as session:
        response = session.get("studio_api/queue_wait")
    assert response.status_code == 200 and set(response.json()) == {"running_left_s", "average_s"}
