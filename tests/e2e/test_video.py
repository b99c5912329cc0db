"""Video tab in a real Chromium: Send to from the Image tab, a video that Chromium plays, the
progress shown while it runs; an uploaded portrait picture, fitted, with a GIF as well; and Stop."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from tests.e2e.helpers import JOB_TIMEOUT_MS, BrowserChecks, Served, changes, generate_image

PROGRESS = re.compile(r"Video (denoising|decoding): step (\d+)/(\d+)")


def test_send_to_video_then_a_video_that_plays(checks: BrowserChecks) -> None:
    page = checks.page
    sent = generate_image(checks, "a red lighthouse on a cliff")

    checks.on("video")
    page.locator("#send-to-video").click()
    checks.tab_selected("Video")
    checks.visible(page.locator(f'#video-image a[href$="/{sent}"]'))  # the Image tab's file, carried across
    fitted = checks.image(page.locator("#video-preview img"))
    checks.that(fitted[0] > fitted[1], f"a square picture is fitted to the landscape size, got {fitted}")
    checks.record("progress", "#video-result")
    page.locator("#video-generate").click()
    checks.video_plays(page.locator("#video-result video"), fitted, timeout=JOB_TIMEOUT_MS)

    shown = changes(m.groups() for text, _ in checks.recorded("progress") for m in PROGRESS.finditer(text))
    stages = [stage for stage, _, _ in shown]
    checks.that("denoising" in stages and "decoding" in stages, f"progress shown: {shown}")
    checks.that(stages.index("denoising") < stages.index("decoding"), f"decoding shown before denoising: {shown}")
    checks.screenshot("video")


def test_upload_a_portrait_picture_and_get_a_gif_too(checks: BrowserChecks, served: Served, tmp_path: Path) -> None:
    picture = tmp_path / "portrait.png"
    Image.fromarray((np.random.default_rng(1).random((200, 120, 3)) * 255).astype(np.uint8)).save(picture)
    page = checks.on("video").page
    panel = checks.open_tab("Video")
    page.locator("#video-image input[type=file]").set_input_files(str(picture))
    checks.image(page.locator("#video-preview img"), (64, 128))  # portrait fit of the 128 × 64 preset
    checks.fill(panel.get_by_label("Frames", exact=True), "4")
    checks.expand(panel, "Advanced")
    checks.fill(panel.get_by_label("Steps", exact=True), "2")
    panel.get_by_label("Also save a GIF").check()
    page.locator("#video-generate").click()
    checks.video_plays(page.locator("#video-result video"), (64, 128), timeout=JOB_TIMEOUT_MS)
    checks.shows(panel, re.compile(r'"num_frames"\s*:\s*4\b'))
    checks.visible(panel.get_by_text(".gif").first)  # listed for download beside the MP4
    gifs = [path for path in served.outputs.rglob("*.gif") if path.stat().st_size > 0]
    checks.that(len(gifs) == 1, f"expected the one GIF in {served.outputs}, found {gifs}")


def test_stop_ends_a_long_video_saves_nothing_and_the_next_one_runs(checks: BrowserChecks, served: Served,
                                                                     tmp_path: Path) -> None:
    """Stop mid-run: the job ends at its next step, no file of it is saved, and the tab works on."""
    picture = tmp_path / "square.png"
    Image.fromarray((np.random.default_rng(2).random((96, 96, 3)) * 255).astype(np.uint8)).save(picture)
    page = checks.on("video").page
    panel = checks.open_tab("Video")
    page.locator("#video-image input[type=file]").set_input_files(str(picture))
    checks.image(page.locator("#video-preview img"))
    checks.fill(panel.get_by_label("Frames", exact=True), "14")
    checks.expand(panel, "Advanced")
    checks.fill(panel.get_by_label("Steps", exact=True), "100")  # the most the tab takes: long enough to stop
    before = set(served.outputs.rglob("*.mp4"))
    page.locator("#video-generate").click()
    checks.shows(page.locator("#video-result"), re.compile(r"Video denoising: step \d+/100"), timeout=JOB_TIMEOUT_MS)
    page.locator("#video-stop").click()
    checks.shows(page.locator(".toast-body"), "Stopping")
    page.wait_for_timeout(3_000)  # a job that ignored Stop would go on stepping and save its video
    checks.that(set(served.outputs.rglob("*.mp4")) == before, "the stopped job saved a video")

    checks.fill(panel.get_by_label("Steps", exact=True), "2")
    page.locator("#video-generate").click()
    checks.video_plays(page.locator("#video-result video"), timeout=JOB_TIMEOUT_MS)
    new = set(served.outputs.rglob("*.mp4")) - before
    checks.that(len(new) == 1, f"expected only the second video to be saved, found {sorted(new)}")
