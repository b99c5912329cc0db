"""A reloaded page comes back as it was: on the tab it was on, with what was typed and set in it
(tabs/session.py); a fresh browser gets the defaults."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.helpers import UI_TIMEOUT_MS, BrowserChecks

APP_ARGV = ["--tabs", "image,chat"]


def test_a_reload_keeps_the_tab_and_the_inputs(checks: BrowserChecks) -> None:
    page = checks.on("session").page
    panel = checks.open_tab("Image")
    checks.fill(panel.get_by_label("Prompt", exact=True), "a half-written prompt about the sea")
    checks.fill(panel.get_by_label("Negative prompt", exact=True), "blurry")
    checks.open_tab("Chat")
    checks.fill(page.locator("#chat-message textarea"), "not sent yet")
    page.wait_for_timeout(500)  # the page saves on change; give the last one a moment

    page.reload()
    page.locator("[role=tab]").first.wait_for(timeout=30_000)
    checks.tab_selected("Chat")
    checks.check(lambda: expect(page.locator("#chat-message textarea")).to_have_value("not sent yet",
                                                                                     timeout=UI_TIMEOUT_MS))
    panel = checks.open_tab("Image")
    checks.check(lambda: expect(panel.get_by_label("Prompt", exact=True)).to_have_value(
        "a half-written prompt about the sea", timeout=UI_TIMEOUT_MS))
    checks.check(lambda: expect(panel.get_by_label("Negative prompt", exact=True)).to_have_value(
        "blurry", timeout=UI_TIMEOUT_MS))


def test_a_fresh_browser_starts_from_the_defaults(checks: BrowserChecks) -> None:
    checks.on("session")
    checks.tab_selected("Image")
    checks.check(lambda: expect(checks.panel().get_by_label("Prompt", exact=True)).to_have_value(
        "", timeout=UI_TIMEOUT_MS))
