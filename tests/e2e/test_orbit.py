"""3D orbit tab in a real Chromium: Send to from the Image tab, the progress shown while it runs,
then a contact sheet of every view and an orbit video that Chromium plays."""

from __future__ import annotations

import re

from tests.e2e.helpers import JOB_TIMEOUT_MS, BrowserChecks, changes, generate_image

PROGRESS = re.compile(r"Orbit (denoising|decoding): step (\d+)/(\d+)")
#: The tiny preset's views are 64² and the sheet has three rows of seven (21 views).
VIEW = 64
SHEET = (7 * VIEW, 3 * VIEW)


def test_send_to_orbit_then_an_orbit_that_plays(checks: BrowserChecks) -> None:
    page = checks.page
    sent = generate_image(checks, "a red teapot")

    checks.on("orbit")
    page.locator("#send-to-orbit").click()
    checks.tab_selected("3D orbit")
    checks.visible(page.locator(f'#orbit-image a[href$="/{sent}"]'))  # the Image tab's file, carried across
    checks.image(page.locator("#orbit-preview img"), (VIEW, VIEW))
    checks.record("progress", "#orbit-result")
    page.locator("#orbit-generate").click()
    checks.image(page.locator("#orbit-sheet img"), SHEET, timeout=JOB_TIMEOUT_MS)
    checks.video_plays(page.locator("#orbit-result video"), (VIEW, VIEW))

    shown = changes(m.groups() for text, _ in checks.recorded("progress") for m in PROGRESS.finditer(text))
    stages = [stage for stage, _, _ in shown]
    checks.that("denoising" in stages and "decoding" in stages, f"progress shown: {shown}")
    checks.screenshot("orbit")
