"""LAN sharing: --listen never serves without a login unless --no-auth; only outputs are served."""

from __future__ import annotations

import logging
import re
from typing import Callable

import httpx
import pytest
from gradio_client import Client


def login(url: str, user: str, password: str) -> httpx.Client:
    session = httpx.Client(base_url=url, timeout=30)
    session.post("/login", data={"username": user, "password": password})
    return session


def test_listen_without_auth_generates_a_password_and_rejects_strangers(
        launch_app: Callable[..., str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cascade_studio"):
        url = launch_app("--listen")
    printed = re.search(r"User: (\S+)\s+Password: (\S+)", caplog.text)
    assert printed, "the generated password must be printed in the console"
    user, password = printed.groups()
    assert "On your network: http://" in caplog.text

    assert httpx.get(url + "config", timeout=30).status_code == 401
    assert login(url, user, "wrong-password").get("/config").status_code == 401
    assert login(url, user, password).get("/config").status_code == 200

    client = Client(url, auth=(user, password), verbose=False)
    assert client.predict(api_name="/status")["preset"] == "tiny"


def test_auth_flag_and_no_auth_opt_out(launch_app: Callable[..., str]) -> None:
    url = launch_app("--listen", "--auth", "alice:s3cret")
    assert httpx.get(url + "config", timeout=30).status_code == 401
    assert login(url, "alice", "s3cret").get("/config").status_code == 200

    open_url = launch_app("--listen", "--no-auth")
    assert httpx.get(open_url + "config", timeout=30).status_code == 200


@pytest.mark.parametrize("path", ["/etc/passwd", "../../../../etc/passwd", "%2Fetc%2Fpasswd"])
def test_files_outside_outputs_and_cache_are_refused(launch_app: Callable[..., str], path: str) -> None:
    url = launch_app()
    response = httpx.get(f"{url}gradio_api/file={path}", timeout=30)
    assert response.status_code in (403, 404)
    assert "root:" not in response.text


def test_generated_outputs_are_served(launch_app: Callable[..., str]) -> None:
    client = Client(launch_app(), verbose=False)
    _, info = client.predict("a cat", "", 256, 256, 2, 2, 4.0, 0.0, 1, 3, api_name="/generate_image")
    response = httpx.get(f"{client.src}gradio_api/file={info['files'][0]}", timeout=30)
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
