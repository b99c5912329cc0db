"""Image tab in a real Chromium: a generated image of the size asked for, live previews, and a
bad input that shows an error naming the field while the app keeps working."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.helpers import JOB_TIMEOUT_MS, UI_TIMEOUT_MS, BrowserChecks, changes, generate_image

PREVIEW = re.compile(r"preview: stage C step (\d+)/(\d+)")


def test_generate_shows_a_real_image_of_the_asked_size(checks: BrowserChecks) -> None:
    name = generate_image(checks, "a red lighthouse on a cliff", size=(384, 256))
    checks.that(name.endswith(".png"), f"the result is served as a PNG, got {name!r}")
    checks.shows(checks.panel(), re.compile(r'"seed"\s*:\s*\d+'))  # the info JSON carries the seed used
    checks.screenshot("image")


def test_live_previews_appear_before_the_result(checks: BrowserChecks) -> None:
    page = checks.on("image").page
    panel = checks.open_tab("Image")
    checks.fill(panel.get_by_label("Prompt", exact=True), "a blue boat at dusk")
    panel.get_by_label("Live previews").check()
    checks.record("gallery", "#image-gallery")
    page.locator("#image-generate").click()
    checks.shows(page.locator("#image-gallery"), "seed", timeout=JOB_TIMEOUT_MS)
    checks.image(page.locator("#image-gallery img").first, (256, 256))

    seen = checks.recorded("gallery")
    steps = changes(int(m.group(1)) for text, images in seen if images for m in PREVIEW.finditer(text))
    checks.that(len(steps) >= 1, f"no preview with an image was shown; the gallery showed {changes(seen)}")
    checks.that(steps == sorted(steps), f"previews went backwards: steps {steps}")
    last = next(i for i, (text, _) in enumerate(seen) if PREVIEW.search(text))
    checks.that(any("seed" in text for text, _ in seen[last:]), "the final images did not replace the previews")


def test_bad_width_shows_an_error_naming_the_field_and_the_app_keeps_working(checks: BrowserChecks) -> None:
    page = checks.on("image").page
    panel = checks.open_tab("Image")
    checks.fill(panel.get_by_label("Prompt", exact=True), "a cat")
    checks.expand(panel, "Advanced")
    checks.fill(panel.get_by_label("Width", exact=True), "100")
    page.locator("#image-generate").click()
    toast = page.locator(".toast-body.error")
    # Names the field and the value (today: "width: must be between 256 and 2048, got 100").
    checks.shows(toast, re.compile(r"\bwidth\b.*\b100\b"), timeout=JOB_TIMEOUT_MS)
    checks.that(page.locator("#image-gallery img").count() == 0, "a failed job still showed an image")
    checks.screenshot("image-error", full_page=False)  # the toast is a fixed overlay
    toast.locator(".toast-close").first.click()
    checks.check(lambda: expect(toast).to_have_count(0, timeout=UI_TIMEOUT_MS))

    checks.fill(panel.get_by_label("Width", exact=True), "256")
    page.locator("#image-generate").click()
    checks.image(page.locator("#image-gallery img").first, (256, 256), timeout=JOB_TIMEOUT_MS)
    checks.that(page.locator(".toast-body.error").count() == 0, "the retry showed an error too")


def test_recent_outputs_are_listed_again_after_a_reload(checks: BrowserChecks) -> None:
    """The history is filled at each page load (a private load event), so a reload still shows it."""
    page = checks.on("image").page
    name = generate_image(checks, "a green field")
    page.reload()
    panel = checks.open_tab("Image")
    checks.expand(panel, "Recent outputs")
    history = page.locator("#image-history")
    checks.visible(history.locator(f'img[src$="/{name}"]').first)
    checks.image(history.locator(f'img[src$="/{name}"]').first)


def test_stop_is_not_a_failure_and_the_previous_result_stays(checks: BrowserChecks) -> None:
    """Stop mid-job with live previews on: a neutral notice, no Error pill, and the gallery shows
    the previous result again instead of the last preview."""
    page = checks.on("image").page
    generate_image(checks, "a red lighthouse on a cliff")
    gallery = page.locator("#image-gallery")
    before = gallery.inner_text()
    panel = checks.panel()
    panel.get_by_label("Live previews").check()
    checks.expand(panel, "Advanced")
    checks.fill(panel.get_by_label("Stage C steps", exact=True), "100")
    page.locator("#image-generate").click()
    checks.shows(gallery, PREVIEW, timeout=JOB_TIMEOUT_MS)
    page.locator("#image-stop").click()
    checks.shows(page.locator(".toast-body.info").filter(has_text="Stopped").first, "nothing was saved",
                 timeout=JOB_TIMEOUT_MS)
    checks.check(lambda: expect(gallery).not_to_contain_text("preview:", timeout=UI_TIMEOUT_MS))
    checks.shows(gallery, re.compile(re.escape(before.strip().splitlines()[0]) if before.strip() else "seed"))
    checks.that(page.locator(".toast-body.error").count() == 0, "Stop showed a red error")
    tracker = gallery.locator('[data-testid="status-tracker"]')
    checks.that("Error" not in " ".join(tracker.all_inner_texts()), "Stop left an Error pill on the gallery")
    checks.screenshot("image-stopped", full_page=False)
