"""Real-browser smoke test: Debian's Chromium driven by Playwright against the tiny-preset app."""

from __future__ import annotations

from typing import Callable

from playwright.sync_api import Page, expect


def test_type_a_prompt_click_generate_and_see_an_image(launch_app: Callable[..., str], page: Page) -> None:
    page.goto(launch_app())
    page.get_by_label("Prompt", exact=True).fill("a red lighthouse on a cliff")
    page.locator("#image-generate").click()
    image = page.locator("#image-gallery img").first
    expect(image).to_be_visible(timeout=60_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                           timeout=30_000)
    assert image.evaluate("img => img.naturalWidth") == 256


def test_system_tab_shows_the_loaded_components(launch_app: Callable[..., str], page: Page) -> None:
    page.goto(launch_app())
    page.get_by_label("Prompt", exact=True).fill("a cat")
    page.locator("#image-generate").click()
    expect(page.locator("#image-gallery img").first).to_be_visible(timeout=60_000)
    page.get_by_role("tab", name="System").click()
    table = page.locator("#system-components")
    expect(table).to_contain_text("cascade.prior", timeout=15_000)
    expect(table).to_contain_text("gpu")
    expect(page.locator("#system-summary")).to_contain_text("Preset:")
