"""The Chat tab in a real browser (Debian's Chromium via Playwright), tiny preset: Send streams a
reply with its figures, Regenerate replaces it, Clear empties the chat."""

from __future__ import annotations

from typing import Callable

from playwright.sync_api import Page, expect


def test_send_regenerate_and_clear(launch_app: Callable[..., str], page: Page) -> None:
    page.goto(launch_app("--tabs", "chat"))
    expect(page.locator("#chat-model")).to_contain_text("Tiny StableLM")
    page.locator("#chat-message textarea").fill("Hello there")
    page.locator("#chat-send").click()
    stats = page.locator("#chat-stats")
    expect(stats).to_contain_text("tokens/s", timeout=60_000)
    expect(page.locator("#chat-bot")).to_contain_text("Hello there")
    expect(page.locator("#chat-message textarea")).to_have_value("")
    first = stats.inner_text()
    page.locator("#chat-regenerate").click()
    expect(stats).not_to_have_text(first, timeout=30_000)  # new figures for the new reply
    expect(stats).to_contain_text("tokens/s", timeout=30_000)
    assert page.locator("#chat-bot").inner_text().count("Hello there") == 1  # replaced, not appended
    # The event's closing message repeats its last output and may land just after a click; a
    # user would click again, and so does the test.
    for _ in range(20):
        page.locator("#chat-clear").click()
        page.wait_for_timeout(250)
        if "Hello there" not in page.locator("#chat-bot").inner_text():
            break
    expect(page.locator("#chat-bot")).not_to_contain_text("Hello there")
