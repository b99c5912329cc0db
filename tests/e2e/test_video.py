"""Video tab in a real Chromium: Send to from the Image tab, a video that Chromium plays, the
progress shown while it runs; an uploaded portrait picture, fitted, with a GIF as well; Stop; a
corrupt file refused when chosen; and Generate on a phone's first screen."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import Locator, expect

from tests.e2e.helpers import JOB_TIMEOUT_MS, UI_TIMEOUT_MS, BrowserChecks, Served, changes, generate_image

PROGRESS = re.compile(r"Video (denoising|decoding): step (\d+)/(\d+)")
#: A phone's viewport (CSS pixels of an iPhone 12–15).
PHONE = {"width": 390, "height": 844}


def slider(panel: Locator, label: str) -> Locator:
    """The number box of the slider ``label``: gradio 6.31 names a slider's two inputs "number
    input for …" and "range slider for …" (aria-label), so the plain label finds neither."""
    return panel.get_by_label(f"number input for {label}", exact=True)


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
    checks.fill(slider(panel, "Frames"), "4")
    checks.expand(panel, "Advanced")
    checks.fill(slider(panel, "Steps"), "2")
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
    checks.fill(slider(panel, "Frames"), "14")
    checks.expand(panel, "Advanced")
    checks.fill(slider(panel, "Steps"), "100")  # the most the tab takes: long enough to stop
    before = set(served.outputs.rglob("*.mp4"))
    page.locator("#video-generate").click()
    checks.shows(page.locator("#video-result"), re.compile(r"Video denoising: step \d+/100"), timeout=JOB_TIMEOUT_MS)
    page.locator("#video-stop").click()
    checks.shows(page.locator(".toast-body"), "Stopping")
    page.wait_for_timeout(3_000)  # a job that ignored Stop would go on stepping and save its video
    checks.that(set(served.outputs.rglob("*.mp4")) == before, "the stopped job saved a video")

    checks.fill(slider(panel, "Steps"), "2")
    page.locator("#video-generate").click()
    checks.video_plays(page.locator("#video-result video"), timeout=JOB_TIMEOUT_MS)
    new = set(served.outputs.rglob("*.mp4")) - before
    checks.that(len(new) == 1, f"expected only the second video to be saved, found {sorted(new)}")


def test_a_corrupt_picture_is_refused_when_chosen_and_the_tab_stays_usable(checks: BrowserChecks,
                                                                           tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 8)
    page = checks.on("video").page
    panel = checks.open_tab("Video")
    upload = page.locator("#video-image input[type=file]")
    upload.set_input_files(str(broken))
    checks.shows(page.locator(".toast-body.warning"), "Input picture (image): could not read broken.png")
    checks.that(page.locator(".toast-body.error").count() == 0, "a refused upload showed a red error")
    checks.check(lambda: expect(page.locator("#video-preview img")).to_have_count(0))
    checks.check(lambda: expect(page.locator("#video-image")).not_to_contain_text("broken.png",
                                                                                  timeout=UI_TIMEOUT_MS))

    good = tmp_path / "good.png"
    Image.fromarray((np.random.default_rng(4).random((90, 160, 3)) * 255).astype(np.uint8)).save(good)
    upload.set_input_files(str(good))
    checks.image(page.locator("#video-preview img"), (128, 64))
    checks.fill(slider(panel, "Frames"), "2")
    checks.expand(panel, "Advanced")
    checks.fill(slider(panel, "Steps"), "1")
    page.locator("#video-generate").click()
    checks.video_plays(page.locator("#video-result video"), (128, 64), timeout=JOB_TIMEOUT_MS)


def test_on_a_phone_generate_is_on_the_first_screen(checks: BrowserChecks) -> None:
    """At a phone's size the Video tab sits in the tab bar's "More tabs" menu, as a phone user
    finds it; with the page at its top, Generate lies wholly within the first screen."""
    page = checks.on("video").page
    page.set_viewport_size(PHONE)
    page.reload()
    page.locator("[role=tab]").first.wait_for(timeout=UI_TIMEOUT_MS)
    tab = page.get_by_role("tab", name="Video", exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
    else:
        page.get_by_label("More tabs").first.click()
        page.locator(".overflow-dropdown button", has_text="Video").first.click()
    checks.settle()
    button = page.locator("#video-generate")
    checks.visible(button)
    page.evaluate("() => window.scrollTo(0, 0)")
    box = button.bounding_box()
    checks.that(box is not None and box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"],
                f"Generate is at {box}, below the first {PHONE['height']} px of a phone's screen")
    checks.screenshot("video-phone")
