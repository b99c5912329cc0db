"""A small stand-in for the Hugging Face hub, served on 127.0.0.1, for download tests.

It speaks the part of the hub API that huggingface_hub 2.4 uses to find and fetch files (read from
the installed package, ``hf_api.py`` and ``file_download.py``):

- ``GET /api/models/<repo>[/revision/<rev>]`` (``?blobs=true`` adds sizes, blob ids and LFS info)
- ``GET /api/models/<repo>/tree/<rev>[/<path>]`` (one page, no ``Link`` header)
- ``HEAD|GET /<repo>/resolve/<rev>/<path>``: ``X-Repo-Commit`` and ``ETag`` always. Small (git)
  files are answered in place; LFS files (``*.safetensors``) answer 302 with ``X-Linked-Etag`` (their
  sha256) and ``X-Linked-Size`` to ``http://localhost:<port>/cdn/...``, another origin, like the
  hub's CDN, so the client keeps the 302's metadata and drops the token for the transfer.
- ``Range: bytes=N-`` on every file body (206 + ``Content-Range``).

It never sends ``X-Xet-*`` headers or ``xetHash``, so the client takes the plain HTTP path. Gated
repos answer 401 (no token) or 403 (wrong token) with ``X-Error-Code: GatedRepo`` on ``resolve``,
like the hub; their metadata stays public.

Switches for tests: ``cut_next`` stops the next transfer of a file after N body bytes (the client
sees a truncated body); ``fail_next`` answers a status for the next few GETs of a file; ``requests``
records every request with its Range and whether it was authenticated.

How the client is pointed here: huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` into
``huggingface_hub.constants`` once, at import, and ``tests/conftest.py`` sets HF_HUB_OFFLINE=1 before
anything imports it. ``point_client_at`` therefore sets the environment for subprocesses *and*
patches those constants through pytest's ``monkeypatch`` (undone after the test); the code under
test passes no endpoint and so runs exactly as it does for a user who set HF_ENDPOINT.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(r"^/cdn/(?P<repo>[^/]+/[^/]+)/(?P<sha>[0-9a-f]{64})$")
_BODY_CHUNK = 1 << 20
logger = logging.getLogger(__name__)


@dataclass
class FakeRepo:
    """One model repo held in memory."""

    repo_id: str
    files: dict[str, bytes]
    #: Files answer 401/403 without the hub's token, as for a repo whose license must be accepted.
    gated: bool = False

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.repo_id.encode()).hexdigest()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(".safetensors")

    def etag(self, path: str) -> str:
        data = self.files[path]
        if self.is_lfs(path):
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # the git blob id

    def sibling(self, path: str) -> dict[str, Any]:
        data = self.files[path]
        entry: dict[str, Any] = {"rfilename": path, "size": len(data), "blobId": self.etag(path)}
        if self.is_lfs(path):
            entry["blobId"] = hashlib.sha1(path.encode()).hexdigest()  # the pointer's id, not the file's
            entry["lfs"] = {"size": len(data), "sha256": self.etag(path), "pointerSize": 134}
        return entry


@dataclass(frozen=True)
class Seen:
    """One request the hub received."""

    method: str
    repo: str | None
    #: The repo file it concerns (resolve and CDN requests), else None.
    file: str | None
    range: str | None
    authorized: bool
    status: int
    #: Served by the stand-in CDN (LFS bodies) rather than the hub itself.
    cdn: bool = False


@dataclass
class FakeHub:
    """The server; ``start()`` binds a free port on 127.0.0.1."""

    repos: dict[str, FakeRepo]
    token: str = "hf_fake_token_for_tests"
    requests: list[Seen] = field(default_factory=list)
    #: file -> body bytes to send before closing the connection (one-shot)
    cuts: dict[str, int] = field(default_factory=dict)
    #: file -> [status, times] answered to the next GETs of the file
    failures: dict[str, list[int]] = field(default_factory=dict)
    workers: int = 8

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, *repos: FakeRepo) -> FakeHub:
        return cls({repo.repo_id: repo for repo in repos})

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        self._server = _PooledServer(("127.0.0.1", 0), _handler_for(self), self.workers)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fakehub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def cut_next(self, file: str, after_bytes: int) -> None:
        """The next transfer of ``file`` stops after ``after_bytes`` body bytes (connection closed)."""
        self.cuts[file] = after_bytes

    def fail_next(self, file: str, status: int, times: int = 1) -> None:
        """The next ``times`` GETs of ``file`` are answered with ``status``."""
        self.failures[file] = [status, times]

    def seen(self, file: str, method: str = "GET") -> list[Seen]:
        """Requests for one repo file with one method (a redirect and its CDN GET count as two)."""
        with self._lock:
            return [r for r in self.requests if r.file == file and r.method == method]

    def served(self, file: str) -> list[Seen]:
        """GETs that returned body bytes of ``file`` (200 or 206)."""
        return [r for r in self.seen(file) if r.status in (200, 206)]

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)


class _PooledServer(HTTPServer):
    """An HTTPServer whose connections are handled by a bounded thread pool."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], workers: int) -> None:
        super().__init__(address, handler)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fakehub-worker")

    def process_request(self, request: Any, client_address: Any) -> None:
        self._pool.submit(self._work, request, client_address)

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except ConnectionError as error:  # the client stopped reading (a cancelled download): expected
            logger.debug("fake hub: %s went away: %s", client_address, error)
        except OSError:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive holds a worker
        timeout = 10

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            return None

        def do_HEAD(self) -> None:
            self._route("HEAD")

        def do_GET(self) -> None:
            self._route("GET")

        def _route(self, method: str) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            if method == "GET" and (m := _TREE.match(path)):
                return self._tree(m["repo"], m["rev"], m["path"])
            if method == "GET" and (m := _API.match(path)):
                return self._info(m["repo"], m["rev"], "blobs" in parse_qs(parts.query))
            if m := _RESOLVE.match(path):
                return self._resolve(method, m["repo"], m["rev"], m["path"])
            if m := _CDN.match(path):
                return self._cdn(method, m["repo"], m["sha"])
            self._send(404, {"X-Error-Code": "EntryNotFound"}, b"not found")

        def _repo(self, repo_id: str, rev: str | None) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._send(404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found")
            elif rev not in (None, "main", repo.sha):
                self._send(404, {"X-Error-Code": "RevisionNotFound"}, b"Invalid rev id")
                return None
            return repo

        def _info(self, repo_id: str, rev: str | None, blobs: bool) -> None:
            hub.record(Seen("GET", repo_id, None, None, self._auth() is not None, 200))
            if (repo := self._repo(repo_id, rev)) is None:
                return
            siblings = [repo.sibling(p) if blobs else {"rfilename": p} for p in sorted(repo.files)]
            body = {"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha, "private": False,
                    "gated": "manual" if repo.gated else False, "siblings": siblings}
            self._send(200, {"Content-Type": "application/json"}, json.dumps(body).encode())

        def _tree(self, repo_id: str, rev: str, folder: str | None) -> None:
            hub.record(Seen("GET", repo_id, None, None, self._auth() is not None, 200))
            if (repo := self._repo(repo_id, rev)) is None:
                return
            prefix = f"{folder.strip('/')}/" if folder else ""
            entries = []
            for p in sorted(repo.files):
                if p.startswith(prefix):
                    s = repo.sibling(p)
                    entry = {"type": "file", "path": p, "size": s["size"], "oid": s["blobId"]}
                    if "lfs" in s:
                        entry["lfs"] = {"oid": s["lfs"]["sha256"], "size": s["size"], "pointerSize": 134}
                    entries.append(entry)
            self._send(200, {"Content-Type": "application/json"}, json.dumps(entries).encode())

        def _resolve(self, method: str, repo_id: str, rev: str, file: str) -> None:
            repo = hub.repos.get(repo_id)
            denied = self._denied(repo)
            if repo is None or repo.gated and denied or file not in repo.files or rev not in ("main", repo.sha):
                status = denied if repo is not None and repo.gated and denied else 404
                hub.record(Seen(method, repo_id, file, self.headers.get("Range"), self._auth() is not None, status))
                if status != 404:
                    message = (f"Access to model {repo_id} is restricted. You must have access to it and be "
                               "authenticated to access it. Please log in." if status == 401 else
                               f"Access to model {repo_id} is restricted and you are not in the authorized "
                               f"list. Visit https://huggingface.co/{repo_id} to ask for access.")
                    return self._send(status, {"X-Error-Code": "GatedRepo", "X-Error-Message": message},
                                      message.encode())
                code = "EntryNotFound" if repo is not None else "RepoNotFound"
                return self._send(404, {"X-Error-Code": code, "X-Repo-Commit": repo.sha if repo else ""}, b"")
            headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{repo.etag(file)}"'}
            if repo.is_lfs(file):
                port = self.server.server_address[1]
                hub.record(Seen(method, repo_id, file, self.headers.get("Range"), self._auth() is not None, 302))
                headers.update({"X-Linked-Etag": f'"{repo.etag(file)}"', "X-Linked-Size": str(len(repo.files[file])),
                                "Location": f"http://localhost:{port}/cdn/{quote(repo_id)}/{repo.etag(file)}"})
                return self._send(302, headers, b"")
            self._body(method, repo, file, headers)

        def _cdn(self, method: str, repo_id: str, sha: str) -> None:
            repo = hub.repos.get(repo_id)
            file = next((p for p in (repo.files if repo else {}) if repo and repo.etag(p) == sha), None)
            if repo is None or file is None:
                return self._send(404, {}, b"")
            self._body(method, repo, file, {"ETag": f'"{sha}"'}, cdn=True)

        def _body(self, method: str, repo: FakeRepo, file: str, headers: dict[str, str], cdn: bool = False) -> None:
            data = repo.files[file]
            wanted = self.headers.get("Range")
            failure = hub.failures.get(file)
            if method == "GET" and failure and failure[1] > 0:
                failure[1] -= 1
                hub.record(Seen(method, repo.repo_id, file, wanted, self._auth() is not None, failure[0], cdn))
                return self._send(failure[0], {}, b"injected failure")
            start, status = 0, 200
            if wanted and (m := re.fullmatch(r"bytes=(\d+)-", wanted.strip())):
                start, status = int(m[1]), 206
                if start >= len(data):
                    hub.record(Seen(method, repo.repo_id, file, wanted, self._auth() is not None, 416, cdn))
                    return self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"")
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            hub.record(Seen(method, repo.repo_id, file, wanted, self._auth() is not None, status, cdn))
            body = data[start:]
            headers["Content-Length"] = str(len(body))
            headers["Accept-Ranges"] = "bytes"
            self._send_head(status, headers)
            if method == "HEAD":
                return
            limit = hub.cuts.pop(file, None) if method == "GET" else None
            end = len(body) if limit is None else min(limit, len(body))
            for offset in range(0, end, _BODY_CHUNK):
                self.wfile.write(body[offset:min(offset + _BODY_CHUNK, end)])
            if limit is not None:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # the client sees a truncated body

        def _auth(self) -> str | None:
            value = self.headers.get("Authorization")
            return value.removeprefix("Bearer ").strip() if value else None

        def _denied(self, repo: FakeRepo | None) -> int:
            token = self._auth()
            if repo is None or not repo.gated or token == hub.token:
                return 0
            return 401 if token is None else 403

        def _send_head(self, status: int, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self._send_head(status, {**headers, "Content-Length": str(len(body))})
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


def point_client_at(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """Send huggingface_hub's requests to ``hub`` for one test (see the module docstring)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    # A login saved on the developer's machine must not reach the fake (nor leak into a test).
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(Path(tempfile.gettempdir()) / "fakehub-no-login" / "token"))
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
