"""What the browser end-to-end tests share: counted checks, recorders, and the Image tab's steps.

Every check that decides whether a test passes goes through ``BrowserChecks``, which counts it
under the tab it concerns; the counts go to ``test-artifacts/reliability.json`` (category
``browser``), so the report can say how many browser checks ran per tab and how many failed.

The tiny models are fast: a preview or a progress line may be on screen for a few milliseconds.
Polling from Python would miss it, so ``record`` installs a ``MutationObserver`` in the page that
keeps every text an element shows, and the test reads the list afterwards.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from PIL import Image
from playwright.sync_api import Locator, Page, expect

if TYPE_CHECKING:
    from backends.runtime.studio import Studio
    from tests.conftest import Tally

logger = logging.getLogger(__name__)

#: The first job of a session builds the tiny models (seconds); on a loaded 2-core machine a
#: tiny job can also wait behind another. Generous, since a passing run never waits this long.
JOB_TIMEOUT_MS = 120_000
#: Anything that follows a finished job (a media element loading its file, a toast, a refresh).
UI_TIMEOUT_MS = 30_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: Keeps every (text, image count) an element shows, from now on, in ``window.__records[key]``.
RECORD = """([key, selector]) => {
  window.__records = window.__records || {};
  const seen = window.__records[key] = [];
  const element = document.querySelector(selector);
  const note = () => seen.push([element.innerText, element.querySelectorAll('img').length]);
  new MutationObserver(note).observe(element, {subtree: true, childList: true, characterData: true,
                                               attributes: true});
}"""

#: A loaded image's natural size, once it has decoded.
IMAGE_LOADED = "img => img.complete && img.naturalWidth > 0"
#: HAVE_FUTURE_DATA: the browser has decoded enough to play on from here.
VIDEO_PLAYABLE = "v => v.readyState >= 3 && v.videoWidth > 0"
#: Playing: not paused, and the clock has moved from where it was (or wrapped round: ``loop``).
VIDEO_ADVANCED = "([v, start]) => !v.paused && v.currentTime !== start"


@dataclass(frozen=True)
class Served:
    """One running app: its Studio (for load counts and placements), URL and outputs folder."""

    studio: "Studio"
    url: str
    outputs: Path


class BrowserChecks:
    """The page under test, with the checks a test makes counted per tab.

    A check that fails counts as failed for its tab and re-raises, so the test fails as usual.
    """

    def __init__(self, page: Page, screenshots: Path) -> None:
        self.page = page
        self.screenshots = screenshots
        self.tab = "app"
        self.passed: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    # ----- counting ------------------------------------------------------------------------
    def on(self, tab: str) -> BrowserChecks:
        """Count the following checks under ``tab`` (``image``, ``variation``, …)."""
        self.tab = tab
        return self

    def check(self, check: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``check(*args, **kwargs)`` (an ``expect(...)`` or any callable that raises when
        the page is wrong) and count it; returns what it returns."""
        try:
            result = check(*args, **kwargs)
        except Exception:
            self.failed[self.tab] += 1
            raise
        self.passed[self.tab] += 1
        return result

    def report(self, tally: "Tally") -> None:
        for tab in sorted(set(self.passed) | set(self.failed)):
            tally.add("browser", tab, checks=self.passed[tab], failed=self.failed[tab])

    # ----- the checks ----------------------------------------------------------------------
    def that(self, condition: bool, message: str) -> None:
        """A plain assertion, counted."""

        def check() -> None:
            assert condition, message

        self.check(check)

    def shows(self, locator: Locator, text: str | re.Pattern[str], timeout: float = UI_TIMEOUT_MS) -> None:
        """The element shows ``text`` within ``timeout`` (ms)."""
        self.check(lambda: expect(locator).to_contain_text(text, timeout=timeout))

    def tab_selected(self, title: str, timeout: float = UI_TIMEOUT_MS) -> None:
        """The tab titled ``title`` is the one on screen."""
        tab = self.page.get_by_role("tab", name=title, exact=True)
        self.check(lambda: expect(tab).to_have_attribute("aria-selected", "true", timeout=timeout))

    def visible(self, locator: Locator, timeout: float = UI_TIMEOUT_MS) -> None:
        self.check(lambda: expect(locator).to_be_visible(timeout=timeout))

    def image(self, locator: Locator, size: tuple[int, int] | None = None,
              timeout: float = UI_TIMEOUT_MS) -> tuple[int, int]:
        """The <img> is visible and decoded (natural width > 0), at ``size`` when given."""

        def check() -> tuple[int, int]:
            expect(locator).to_be_visible(timeout=timeout)
            self.page.wait_for_function(IMAGE_LOADED, arg=locator.element_handle(), timeout=UI_TIMEOUT_MS)
            natural = tuple(locator.evaluate("img => [img.naturalWidth, img.naturalHeight]"))
            assert natural[0] > 0 and natural[1] > 0, f"image decoded to {natural}"
            assert size is None or natural == size, f"image is {natural}, expected {size}"
            return natural

        return self.check(check)

    def video_plays(self, locator: Locator, size: tuple[int, int] | None = None,
                    timeout: float = UI_TIMEOUT_MS) -> tuple[int, int]:
        """The <video> reaches HAVE_FUTURE_DATA, decodes to ``size``, and its clock advances."""

        def check() -> tuple[int, int]:
            expect(locator).to_be_attached(timeout=timeout)
            handle = locator.element_handle()
            self.page.wait_for_function(VIDEO_PLAYABLE, arg=handle, timeout=UI_TIMEOUT_MS)
            start = locator.evaluate("v => v.currentTime")
            self.page.wait_for_function(VIDEO_ADVANCED, arg=[handle, start], timeout=UI_TIMEOUT_MS)
            decoded = tuple(locator.evaluate("v => [v.videoWidth, v.videoHeight]"))
            assert size is None or decoded == size, f"video decodes to {decoded}, expected {size}"
            return decoded

        return self.check(check)

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        """A PNG at ``screenshots/<name>.png``, checked to be a real, non-empty PNG.

        ``full_page=False`` keeps to the viewport, where fixed overlays such as toasts are drawn.
        """

        def check() -> Path:
            self.screenshots.mkdir(parents=True, exist_ok=True)
            path = self.screenshots / f"{name}.png"
            self.page.screenshot(path=str(path), full_page=full_page)
            assert path.stat().st_size > 0 and path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
            with Image.open(path) as shot:
                assert shot.width > 0 and shot.height > 0
            logger.info("screenshot of the %s tab: %s", name, path)
            return path

        return self.check(check)

    # ----- reading the page -----------------------------------------------------------------
    def record(self, key: str, selector: str) -> None:
        """Start keeping every text (and image count) the element shows (see ``RECORD``)."""
        self.page.locator(selector).wait_for(state="attached", timeout=UI_TIMEOUT_MS)
        self.page.evaluate(RECORD, [key, selector])

    def recorded(self, key: str) -> list[tuple[str, int]]:
        return [(text, images) for text, images in self.page.evaluate("key => window.__records[key]", key)]

    def panel(self) -> Locator:
        """The app's tab panel on screen (hidden tabs stay in the page once shown; ``first``
        skips panels of tabs nested inside it)."""
        return self.page.locator("[role=tabpanel]").filter(visible=True).first

    def open_tab(self, title: str, within: Locator | None = None) -> Locator:
        """Show the tab ``title`` (of the app, or nested ``within`` a panel); returns the app's panel."""
        tab = (within or self.page).get_by_role("tab", name=title, exact=True)
        tab.click()
        expect(tab).to_have_attribute("aria-selected", "true", timeout=UI_TIMEOUT_MS)
        self.settle()
        return self.panel()

    def expand(self, panel: Locator, title: str) -> None:
        """Open the accordion ``title`` inside ``panel``."""
        panel.get_by_text(title, exact=True).click()
        self.settle()

    def settle(self) -> None:
        """Wait two animation frames after showing a tab or accordion.

        Gradio 6.31 builds a tab's components when it is first shown, and a value typed in at
        that same moment is put back to the default (seen with img2img's Strength: filled with
        0.6 straight after its tab opened, sent as 0.8). Two frames later it usually sticks;
        ``fill`` makes sure.
        """
        self.page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")

    def fill(self, field: Locator, text: str) -> None:
        """Type ``text`` into ``field`` and make sure it stays (a checked step).

        On a busy machine a field can still be reset to its default after ``settle`` (a chat
        temperature typed as 0 came back as the default and the reply ended early), so the text
        is typed again until it has stayed for a moment.
        """
        for _ in range(5):
            field.fill(text)
            self.page.wait_for_timeout(150)
            if field.input_value() == text:
                break
        self.that(field.input_value() == text, f"the field kept {field.input_value()!r}, not {text!r}")


def generate_image(checks: BrowserChecks, prompt: str = "a red lighthouse on a cliff",
                   size: tuple[int, int] | None = None) -> str:
    """Run the Image tab (at ``size`` if given, else the preset's 256²); returns the file name.

    Counts its checks under ``image``: the result is a decoded image of the size asked for.
    """
    page = checks.on("image").page
    panel = checks.open_tab("Image")
    checks.fill(panel.get_by_label("Prompt", exact=True), prompt)
    if size is not None:
        checks.expand(panel, "Advanced")
        checks.fill(panel.get_by_label("Width", exact=True), str(size[0]))
        checks.fill(panel.get_by_label("Height", exact=True), str(size[1]))
    page.locator("#image-generate").click()
    result = page.locator("#image-gallery img").first
    checks.image(result, size or (256, 256), timeout=JOB_TIMEOUT_MS)
    checks.shows(page.locator("#image-gallery"), "seed")  # the final result, not a preview
    return Path(result.get_attribute("src") or "").name


def make_it_long(checks: BrowserChecks, panel: Locator, side: int = 512) -> None:
    """Set the Image tab to a long job (``side``², 100 + 50 steps): long enough to act on while it
    runs (a 100-step 256² job ends in about 3.6 s on the tiny models, before a Stop can land)."""
    checks.expand(panel, "Advanced")
    checks.fill(panel.get_by_label("Width", exact=True), str(side))
    checks.fill(panel.get_by_label("Height", exact=True), str(side))
    # A slider's number box: gradio 6.31 labels it "number input for <label>".
    checks.fill(panel.get_by_label("number input for Stage C steps", exact=True), "100")
    checks.fill(panel.get_by_label("number input for Stage B steps", exact=True), "50")


def changes(values: Iterable[Any]) -> list[Any]:
    """``values`` with consecutive repeats dropped (what a recorder saw, one entry per change)."""
    kept: list[Any] = []
    for value in values:
        if not kept or kept[-1] != value:
            kept.append(value)
    return kept
