"""3D orbit tab in a real Chromium: Send to from the Image tab, the progress shown while it runs,
then a contact sheet of every view and an orbit video that Chromium plays, and the seed buttons
(Random sets -1, Reuse last the seed the orbit used)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import expect

from tests.e2e.helpers import JOB_TIMEOUT_MS, UI_TIMEOUT_MS, BrowserChecks, Served, changes, generate_image

PROGRESS = re.compile(r"Orbit (denoising|decoding): step (\d+)/(\d+)")
#: The tiny preset's views are 64² and the sheet has three rows of seven (21 views).
VIEW = 64
SHEET = (7 * VIEW, 3 * VIEW)


def test_send_to_orbit_then_an_orbit_that_plays(checks: BrowserChecks, served: Served) -> None:
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

    # The orbit ran with seed -1; its parameters file (beside the MP4) records the seed it picked.
    video = Path(page.locator("#orbit-result video").get_attribute("src") or "").name
    params = list(served.outputs.rglob(f"{Path(video).stem}.json"))
    checks.that(len(params) == 1, f"no single parameters file for {video!r}: {params}")
    used = json.loads(params[0].read_text())["seed"]
    checks.that(isinstance(used, int) and used >= 0, f"the orbit's seed is {used!r}")
    panel = checks.panel()
    seed = panel.get_by_label("Seed", exact=True)
    checks.fill(seed, "7")
    panel.get_by_role("button", name="Random", exact=True).click()
    checks.check(lambda: expect(seed).to_have_value("-1", timeout=UI_TIMEOUT_MS))
    panel.get_by_role("button", name="Reuse last", exact=True).click()
    checks.check(lambda: expect(seed).to_have_value(str(used), timeout=UI_TIMEOUT_MS))
