"""A job ends with its client: gradio_client's ``job.cancel()`` and a closed or reloaded page stop
the running job at its next step, it saves nothing, and the next job starts at once.

Before (issue #14), a cancelled or orphaned job ran on to its end, saved its result, and the next
job waited behind it (25.8 s measured). The timings of each run are logged.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from gradio_client import Client

from backends.runtime.studio import Studio

logger = logging.getLogger(__name__)

#: Long enough that running it out would take many seconds on the tiny models.
LONG = dict(prompt="a long job", negative_prompt="", width=512, height=512, prior_steps=100, decoder_steps=50,
            prior_guidance=4.0, decoder_guidance=0.0, num_images=1, seed=3)
SHORT = dict(LONG, prompt="a short job", width=256, height=256, prior_steps=2, decoder_steps=1, seed=4)


def wait_until_running(studio: Studio, timeout: float = 60.0) -> None:
    """Until some session's job holds a Stop flag (it started stepping)."""
    deadline = time.monotonic() + timeout
    while not studio.running_sessions():
        assert time.monotonic() < deadline, "the long job never started"
        time.sleep(0.05)


def pngs(folder: Path) -> set[Path]:
    return set(folder.rglob("*.png"))


def test_a_cancelled_api_job_stops_saves_nothing_and_the_next_starts_at_once(
        launch_studio: Callable[..., tuple[Studio, str]], tmp_path: Path) -> None:
    outputs = tmp_path / "cancel-outputs"
    studio, url = launch_studio("--outputs", str(outputs))
    client = Client(url, verbose=False)
    client.predict(**SHORT, api_name="/generate_image")  # models loaded: what follows times the jobs only
    before = pngs(outputs)

    job = client.submit(**LONG, api_name="/generate_image")
    wait_until_running(studio)
    started = time.perf_counter()
    job.cancel()
    second = Client(url, verbose=False)  # another user, waiting behind the cancelled job
    gallery, info = second.predict(**SHORT, api_name="/generate_image")
    waited = time.perf_counter() - started
    logger.info("the next job finished %.2f s after the cancel", waited)

    assert info["seed"] == 4 and len(gallery) == 1
    assert pngs(outputs) - before == {Path(info["files"][0])}  # the cancelled job saved nothing
    # The short job alone takes well under a second here; the long one had minutes of steps left.
    assert waited < 10, f"the next job waited {waited:.1f} s behind the cancelled one"


def test_a_closed_page_stops_its_job(launch_studio: Callable[..., tuple[Studio, str]], tmp_path: Path,
                                     page: "object") -> None:
    """A page that reloads mid-job: the job stops at its next step and saves nothing."""
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    outputs = tmp_path / "reload-outputs"
    studio, url = launch_studio("--outputs", str(outputs), "--tabs", "image")
    Client(url, verbose=False).predict(**SHORT, api_name="/generate_image")
    before = pngs(outputs)
    page.goto(url)
    prompt = page.get_by_label("Prompt", exact=True)
    prompt.fill("a long job")
    page.get_by_text("Advanced", exact=True).click()
    # Stage C and B steps are sliders, whose number box gradio 6.31 labels "number input for …".
    for label, value in (("Width", "512"), ("Height", "512"), ("number input for Stage C steps", "100"),
                         ("number input for Stage B steps", "50")):
        page.get_by_label(label, exact=True).fill(value)
    page.locator("#image-generate").click()
    wait_until_running(studio)
    started = time.perf_counter()
    page.reload()
    gallery, info = Client(url, verbose=False).predict(**SHORT, api_name="/generate_image")
    waited = time.perf_counter() - started
    logger.info("after a reload, the next job finished %.2f s later", waited)
    assert pngs(outputs) - before == {Path(info["files"][0])}  # the orphaned job saved nothing
    assert waited < 10, f"the next job waited {waited:.1f} s behind the orphaned one"
