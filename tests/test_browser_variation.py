"""Real-browser test of the Variation / img2img tab: Send to, live previews, the final result."""

from __future__ import annotations

from typing import Callable

from playwright.sync_api import Page, expect


#: Records every text the result gallery shows, so previews that last a fraction of a second
#: are seen however fast the tiny models are.
RECORD_GALLERY_TEXT = """() => {
  window.__galleryTexts = [];
  const gallery = document.querySelector('#variation-gallery');
  new MutationObserver(() => window.__galleryTexts.push(gallery.innerText))
    .observe(gallery, {subtree: true, childList: true, characterData: true});
}"""


def test_send_a_result_to_variation_and_watch_the_previews(launch_app: Callable[..., str], page: Page) -> None:
    page.goto(launch_app())
    page.get_by_label("Prompt", exact=True).first.fill("a red lighthouse on a cliff")
    page.locator("#image-generate").click()
    expect(page.locator("#image-gallery img").first).to_be_visible(timeout=60_000)

    page.locator("#send-to-variation").click()
    expect(page.locator("#variation-input-preview img")).to_be_visible(timeout=15_000)
    page.get_by_label("Live previews").nth(1).check()  # the Image tab has the first one
    page.evaluate(RECORD_GALLERY_TEXT)
    page.locator("#variation-generate").click()
    expect(page.locator("#variation-gallery")).to_contain_text("seed", timeout=60_000)
    seen = " ".join(page.evaluate("window.__galleryTexts"))
    assert "preview: stage C step 2/4" in seen and "preview: stage C step 4/4" in seen
    image = page.locator("#variation-gallery img").first
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                           timeout=30_000)
    assert image.evaluate("img => img.naturalWidth") == 256
