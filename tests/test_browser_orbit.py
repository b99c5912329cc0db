"""Real-browser test of the 3D orbit tab: Send to 3D orbit from an Image result, then an orbit."""

from __future__ import annotations

from typing import Callable

from playwright.sync_api import Page, expect


def test_send_a_result_to_orbit_and_play_the_orbit(launch_app: Callable[..., str], page: Page) -> None:
    page.goto(launch_app())
    page.get_by_label("Prompt", exact=True).first.fill("a red teapot")
    page.locator("#image-generate").click()
    expect(page.locator("#image-gallery img").first).to_be_visible(timeout=60_000)

    page.locator("#send-to-orbit").click()
    expect(page.locator("#orbit-preview img")).to_be_visible(timeout=15_000)
    page.locator("#orbit-generate").click()
    sheet = page.locator("#orbit-sheet img")
    expect(sheet).to_be_visible(timeout=120_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=sheet.element_handle(),
                           timeout=30_000)
    video = page.locator("#orbit-result video")
    expect(video).to_be_attached(timeout=30_000)
    page.wait_for_function("v => v.readyState >= 2", arg=video.element_handle(), timeout=30_000)
