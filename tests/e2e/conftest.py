"""Fixtures of the browser end-to-end suite: one app per test module, and counted checks.

Launching the app costs about a second, but its models stay loaded between tests, so each module
shares one app (its tests do not interfere: jobs and tab state belong to a browser session, and
every test gets a fresh page). A module passes extra command-line flags in ``APP_ARGV``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from tests.e2e.helpers import BrowserChecks, Served
from tests.serving import serve_tiny

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.conftest import Tally


@pytest.fixture(scope="module")
def served(request: pytest.FixtureRequest, models_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The real app (``--preset tiny``) in-process on a free port, for the whole module."""
    outputs = tmp_path_factory.mktemp("e2e-outputs")
    with serve_tiny(models_dir, outputs, *getattr(request.module, "APP_ARGV", ())) as (studio, url):
        yield Served(studio=studio, url=url, outputs=outputs)


@pytest.fixture()
def checks(page: "Page", served: Served, tally: "Tally", artifacts_dir: Path) -> Iterator[BrowserChecks]:
    """The test's page, opened on the app, with counted checks (``tally``'s ``browser`` category)."""
    counted = BrowserChecks(page, artifacts_dir / "screenshots")
    page.goto(served.url)
    page.locator("[role=tab]").first.wait_for(timeout=30_000)
    try:
        yield counted
    finally:
        counted.report(tally)
