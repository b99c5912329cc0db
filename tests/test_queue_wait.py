"""``GET /studio_api/queue_wait`` on the real app (tiny preset): what a waiting page is told.

That the route needs the login when one is set is in ``tests/test_security.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import httpx
import pytest
from gradio_client import Client

if TYPE_CHECKING:
    from backends.runtime.studio import Studio


def test_the_route_tells_the_running_jobs_time_left_and_the_average(
        launch_studio: Callable[..., tuple["Studio", str]]) -> None:
    studio, url = launch_studio()
    route = f"{url}studio_api/queue_wait"
    first = httpx.get(route, timeout=30)
    assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
    assert first.json() == {"running_left_s": None, "average_s": None}  # no job has run yet

    Client(url, verbose=False).predict("a cat", "", 256, 256, 3, 2, 4.0, 0.0, 1, 7, api_name="/generate_image")
    after = httpx.get(route, timeout=30).json()
    assert after["running_left_s"] is None and after["average_s"] > 0

    control = studio.start_job("someone-else")  # a job that has just started and reported nothing
    try:
        during = httpx.get(route, timeout=30).json()
    finally:
        studio.finish_job("someone-else", control)
    assert 0 <= during["running_left_s"] <= after["average_s"]
    assert during["average_s"] == pytest.approx(after["average_s"])


def test_only_a_get_of_the_route_is_answered(launch_app: Callable[..., str]) -> None:
    url = launch_app()
    assert httpx.post(f"{url}studio_api/queue_wait", timeout=30).status_code in (404, 405)
    assert httpx.get(f"{url}studio_api/queue_wait/more", timeout=30).status_code == 404
