"""No dead ends between tabs: every picture result sends on to the tabs that take a picture, the
prompt travels with it, and a Send to … with nothing to send says so."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.helpers import JOB_TIMEOUT_MS, UI_TIMEOUT_MS, BrowserChecks, generate_image


def test_image_to_variation_carries_the_prompt_and_variation_sends_on_to_video(checks: BrowserChecks) -> None:
    page = checks.page
    sent = generate_image(checks, "a red lighthouse on a cliff")
    page.locator("#send-to-variation").click()
    checks.tab_selected("Variation / img2img")
    panel = checks.panel()
    checks.visible(page.locator(f'#variation-image a[href$="/{sent}"]'))
    checks.check(lambda: expect(panel.get_by_label("Prompt", exact=True)).to_have_value(
        "a red lighthouse on a cliff", timeout=UI_TIMEOUT_MS))

    page.locator("#variation-generate").click()
    checks.shows(page.locator("#variation-gallery"), "seed", timeout=JOB_TIMEOUT_MS)
    for target, title, preview in (("video", "Video", "#video-preview img"),
                                   ("orbit", "3D orbit", "#orbit-preview img")):
        checks.open_tab("Variation / img2img")
        page.locator(f"#variation-send-to-{target}").click()
        checks.tab_selected(title)
        checks.image(page.locator(preview))


def test_send_to_without_a_result_says_so(checks: BrowserChecks) -> None:
    page = checks.page
    checks.open_tab("Variation / img2img")
    page.locator("#variation-send-to-video").click()
    checks.shows(page.locator(".toast-body.warning"), "there is no result to send yet")
    checks.tab_selected("Variation / img2img")  # stayed where it was
