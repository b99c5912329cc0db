"""Variation / img2img tab in a real Chromium: Send to from the Image tab, then variations; an
uploaded picture through img2img; both with live previews that show before the final images. A
4:3 picture keeps its aspect with size 0, shown whole, and lands in the tab's own recent outputs;
a corrupt file is refused when chosen; on a phone both Generate buttons are on the first screen."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image
from playwright.sync_api import Locator, expect

from tabs import variation
from tests.e2e.helpers import JOB_TIMEOUT_MS, UI_TIMEOUT_MS, BrowserChecks, Served, changes, generate_image

TAB = "Variation / img2img"
PREVIEW = re.compile(r"preview: stage C step (\d+)/(\d+)")
#: A phone's viewport (CSS pixels of an iPhone 12–15).
PHONE = {"width": 390, "height": 844}


def slider(panel: Locator, label: str) -> Locator:
    """The number box of the slider ``label``: gradio 6.31 names a slider's two inputs "number
    input for …" and "range slider for …" (aria-label), so the plain label finds neither."""
    return panel.get_by_label(f"number input for {label}", exact=True)


def check_previews_then_result(checks: BrowserChecks, size: tuple[int, int]) -> None:
    """The gallery showed previews (with images, steps going up), then the final images."""
    page = checks.page
    checks.shows(page.locator("#variation-gallery"), "seed", timeout=JOB_TIMEOUT_MS)
    checks.image(page.locator("#variation-gallery img").first, size)
    seen = checks.recorded("gallery")
    steps = changes(int(m.group(1)) for text, images in seen if images for m in PREVIEW.finditer(text))
    checks.that(len(steps) >= 1, f"no preview with an image was shown; the gallery showed {changes(seen)}")
    checks.that(steps == sorted(steps), f"previews went backwards: steps {steps}")


def test_send_to_variation_then_variations_with_previews(checks: BrowserChecks) -> None:
    page = checks.page
    sent = generate_image(checks, "a red lighthouse on a cliff")

    checks.on("variation")
    page.locator("#send-to-variation").click()
    checks.tab_selected(TAB)
    checks.visible(page.locator(f'#variation-image a[href$="/{sent}"]'))  # the Image tab's file, carried across
    checks.image(page.locator("#variation-input-preview img"), (256, 256))
    panel = checks.panel()
    panel.get_by_label("Live previews").check()
    checks.record("gallery", "#variation-gallery")
    page.locator("#variation-generate").click()
    check_previews_then_result(checks, (256, 256))
    checks.screenshot("variation")


def test_img2img_on_an_uploaded_picture_with_previews(checks: BrowserChecks, tmp_path: Path) -> None:
    picture = tmp_path / "landscape.png"
    Image.fromarray((np.random.default_rng(3).random((256, 384, 3)) * 255).astype(np.uint8)).save(picture)
    page = checks.on("variation").page
    panel = checks.open_tab(TAB)
    page.locator("#variation-image input[type=file]").set_input_files(str(picture))
    checks.image(page.locator("#variation-input-preview img"), (384, 256))
    checks.fill(panel.get_by_label("Prompt", exact=True), "the same scene in winter")
    checks.open_tab("img2img", within=panel)
    checks.fill(slider(panel, "Strength"), "0.6")
    # A size typed in wins over the one from the input's aspect (which would be 384 × 256 too).
    checks.expand(panel, "Size")
    checks.fill(panel.get_by_label("Width", exact=True), "384")
    checks.fill(panel.get_by_label("Height", exact=True), "256")
    panel.get_by_label("Live previews").check()
    checks.record("gallery", "#variation-gallery")
    page.locator("#img2img-generate").click()
    check_previews_then_result(checks, (384, 256))
    checks.shows(checks.panel(), re.compile(r'"strength"\s*:\s*0\.6\b'))
    checks.screenshot("img2img")


def picture_file(path: Path, size: tuple[int, int], seed: int) -> Path:
    width, height = size
    Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)).save(path)
    return path


def task_of(outputs: Path, name: str) -> str | None:
    """The task recorded in the saved PNG called ``name`` (its ``studio`` chunk)."""
    found = list(outputs.rglob(name))
    if not found:
        return None
    with Image.open(found[0]) as png:
        return json.loads(png.info["studio"])["task"]


def test_a_4_3_picture_keeps_its_aspect_shown_whole_and_listed_in_recent_outputs(
        checks: BrowserChecks, served: Served, tmp_path: Path) -> None:
    generate_image(checks, "a text-to-image result, which this tab's history must not list")
    picture = picture_file(tmp_path / "photo.png", (640, 480), seed=4)
    page = checks.on("variation").page
    panel = checks.open_tab(TAB)
    page.locator("#variation-image input[type=file]").set_input_files(str(picture))
    checks.image(page.locator("#variation-input-preview img"), (640, 480))
    page.locator("#variation-generate").click()  # width and height left at 0: from the picture
    checks.shows(page.locator("#variation-gallery"), "seed", timeout=JOB_TIMEOUT_MS)
    result = page.locator("#variation-gallery img").first
    checks.image(result, (384, 256))  # 4:3 on the 128-pixel grid near 256², not 256 × 256
    checks.shows(panel, "output size 384×256 from the input's aspect ratio")
    fit = result.evaluate("img => getComputedStyle(img).objectFit")
    checks.that(fit == "contain", f"the result is shown cropped (object-fit {fit!r}), not whole")

    checks.expand(panel, "Recent outputs")
    name = Path(result.get_attribute("src") or "").name
    history = page.locator("#variation-history")
    checks.image(history.locator(f'img[src$="/{name}"]').first, (384, 256))
    listed = [Path(src or "").name for src in history.locator("img").evaluate_all("els => els.map(e => e.src)")]
    tasks = {task_of(served.outputs, listed_name) for listed_name in listed}
    checks.that(tasks <= set(variation.TASKS), f"the history lists results of other tabs: {tasks}")


def test_a_corrupt_picture_is_refused_when_chosen_and_the_tab_stays_usable(checks: BrowserChecks,
                                                                           tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 8)
    page = checks.on("variation").page
    checks.open_tab(TAB)
    upload = page.locator("#variation-image input[type=file]")
    upload.set_input_files(str(broken))
    warning = page.locator(".toast-body.warning")
    checks.shows(warning, "Input picture (image): could not read broken.png")
    checks.that(page.locator(".toast-body.error").count() == 0, "a refused upload showed a red error")
    checks.check(lambda: expect(page.locator("#variation-input-preview img")).to_have_count(0))
    checks.check(lambda: expect(page.locator("#variation-image")).not_to_contain_text("broken.png",
                                                                                      timeout=UI_TIMEOUT_MS))

    upload.set_input_files(str(picture_file(tmp_path / "good.png", (256, 256), seed=5)))
    checks.image(page.locator("#variation-input-preview img"), (256, 256))
    page.locator("#variation-generate").click()
    checks.shows(page.locator("#variation-gallery"), "seed", timeout=JOB_TIMEOUT_MS)
    checks.image(page.locator("#variation-gallery img").first, (256, 256))


def open_on_phone(checks: BrowserChecks, title: str) -> None:
    """Reload the app at a phone's size and show the tab ``title`` the way a phone user does:
    from the tab bar, or from its "More tabs" menu for the tabs that do not fit."""
    page = checks.page
    page.set_viewport_size(PHONE)
    page.reload()
    page.locator("[role=tab]").first.wait_for(timeout=UI_TIMEOUT_MS)
    tab = page.get_by_role("tab", name=title, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
    else:
        page.get_by_label("More tabs").first.click()
        page.locator(".overflow-dropdown button", has_text=title).first.click()
    checks.settle()


def on_first_screen(checks: BrowserChecks, button: Locator) -> None:
    """With the page scrolled to its top, ``button`` lies wholly within the phone's screen."""
    checks.visible(button)
    checks.page.evaluate("() => window.scrollTo(0, 0)")
    box = button.bounding_box()
    checks.that(box is not None and box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"],
                f"{button} is at {box}, below the first {PHONE['height']} px of a phone's screen")


def test_on_a_phone_both_generate_buttons_are_on_the_first_screen(checks: BrowserChecks) -> None:
    checks.on("variation")
    open_on_phone(checks, TAB)
    on_first_screen(checks, checks.page.locator("#variation-generate"))
    checks.open_tab("img2img", within=checks.panel())
    on_first_screen(checks, checks.page.locator("#img2img-generate"))
    checks.screenshot("variation-phone")


def test_build_hands_app_py_the_handles_send_to_needs(served: Served) -> None:
    """``app.py`` wires "Send to …" from these (tabs never import each other)."""
    with gr.Blocks():
        handles = variation.build(served.studio)
    assert isinstance(handles["image"], gr.File) and isinstance(handles["prompt"], gr.Textbox)
    assert isinstance(handles["selected_image"], gr.State) and handles["selected_image"].value is None
    assert isinstance(handles["send_row"], gr.Row)
