"""Real-browser smoke test: Debian's Chromium driven by Playwright against the tiny-preset app."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
#: Flags that let Chromium run headless as root on a machine with no network (see NOTES.md).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


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
