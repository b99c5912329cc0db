"""Variation / img2img tab in a real Chromium: Send to from the Image tab, then variations; an
uploaded picture through img2img; both with live previews that show before the final images."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from tests.e2e.helpers import JOB_TIMEOUT_MS, BrowserChecks, changes, generate_image

TAB = "Variation / img2img"
PREVIEW = re.compile(r"preview: stage C step (\d+)/(\d+)")


def check_previews_then_result(checks: BrowserChecks, size: tuple[int, int]) -> None:
    """The gallery showed previews (with images, steps going up), then the final images."""
    page = checks.page
    checks.shows(page.locator("#variation-gallery"), "seed", timeout=JOB_TIMEOUT_MS)
    checks.image(page.locator("#variation-gallery img").first, size)
    seen = checks.recorded("gallery")
    steps = changes(int(m.group(1)) for text, images in seen if images for m in PREVIEW.finditer(text))
    checks.that(len(steps) >= 1, f"no preview with an image was shown; the gallery showed {changes(seen)}")
    checks.that(steps == sorted(steps), f"previews went backwards: steps {steps}")


def test_send_to_variation_then_variations_with_previews(checks: BrowserChecks) -> None:
    page = checks.page
    sent = generate_image(checks, "a red lighthouse on a cliff")

    checks.on("variation")
    page.locator("#send-to-variation").click()
    checks.tab_selected(TAB)
    checks.visible(page.locator(f'#variation-image a[href$="/{sent}"]'))  # the Image tab's file, carried across
    checks.image(page.locator("#variation-input-preview img"), (256, 256))
    panel = checks.panel()
    panel.get_by_label("Live previews").check()
    checks.record("gallery", "#variation-gallery")
    page.locator("#variation-generate").click()
    check_previews_then_result(checks, (256, 256))
    checks.screenshot("variation")


def test_img2img_on_an_uploaded_picture_with_previews(checks: BrowserChecks, tmp_path: Path) -> None:
    picture = tmp_path / "landscape.png"
    Image.fromarray((np.random.default_rng(3).random((256, 384, 3)) * 255).astype(np.uint8)).save(picture)
    page = checks.on("variation").page
    panel = checks.open_tab(TAB)
    page.locator("#variation-image input[type=file]").set_input_files(str(picture))
    checks.image(page.locator("#variation-input-preview img"), (384, 256))
    checks.fill(panel.get_by_label("Prompt", exact=True), "the same scene in winter")
    checks.open_tab("img2img", within=panel)
    checks.fill(panel.get_by_label("Strength", exact=True), "0.6")
    # 0 × 0 would take the input's aspect at the preset's 256² area, which snaps to 256 × 256.
    checks.expand(panel, "Size")
    checks.fill(panel.get_by_label("Width", exact=True), "384")
    checks.fill(panel.get_by_label("Height", exact=True), "256")
    panel.get_by_label("Live previews").check()
    checks.record("gallery", "#variation-gallery")
    page.locator("#img2img-generate").click()
    check_previews_then_result(checks, (384, 256))
    checks.shows(checks.panel(), re.compile(r'"strength"\s*:\s*0\.6\b'))
    checks.screenshot("img2img")
