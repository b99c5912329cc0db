"""Real-browser test of the Video tab: upload, fitted preview, Generate, the video and its files."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from playwright.sync_api import Page, expect


def test_upload_generate_and_play(launch_app: Callable[..., str], page: Page, tmp_path: Path) -> None:
    picture = tmp_path / "portrait.png"
    Image.fromarray((np.random.default_rng(1).random((200, 120, 3)) * 255).astype(np.uint8)).save(picture)
    page.goto(launch_app())
    page.get_by_role("tab", name="Video").click()
    page.locator("#video-image input[type=file]").set_input_files(str(picture))
    preview = page.locator("#video-preview img")
    expect(preview).to_be_visible(timeout=30_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=preview.element_handle(),
                           timeout=15_000)
    assert preview.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 128]  # portrait fit
    page.get_by_text("Advanced").last.click()
    page.get_by_label("Also save a GIF").check()
    page.locator("#video-generate").click()
    player = page.locator("#video-result video")
    expect(player).to_be_visible(timeout=60_000)
    page.wait_for_function("v => v.readyState >= 1 && v.videoWidth > 0", arg=player.element_handle(),
                           timeout=30_000)
    assert player.evaluate("v => [v.videoWidth, v.videoHeight]") == [64, 128]  # Chromium decodes it
    expect(page.get_by_text(".gif").first).to_be_visible(timeout=15_000)
