"""The SD models in a real Chromium: the Image tab's model selector shows each model's own controls,
an SDXL text-to-image comes back and PNG Info chooses its model again; in the Variation / img2img
tab a mask drawn on the picture is inpainted, and outside it the picture's pixels come back unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import Locator, expect

from tests.e2e.helpers import JOB_TIMEOUT_MS, BrowserChecks, Served

TAB = "Variation / img2img"


def slider(panel: Locator, label: str) -> Locator:
    """A slider's number box (gradio 6.31 labels it "number input for <label>")."""
    return panel.get_by_label(f"number input for {label}", exact=True)


def choose(checks: BrowserChecks, panel: Locator, label: str, option: str) -> None:
    """Pick ``option`` in the dropdown ``label``."""
    panel.get_by_label(label, exact=True).click()
    checks.page.get_by_role("option", name=option, exact=True).click()
    checks.settle()


def hidden(checks: BrowserChecks, locator: Locator) -> None:
    checks.check(lambda: expect(locator).to_be_hidden())


def test_the_selector_shows_each_models_controls_and_sdxl_generates_and_png_info_restores_it(
        checks: BrowserChecks, served: Served) -> None:
    page = checks.on("image").page
    panel = checks.open_tab("Image")
    checks.expand(panel, "Advanced")
    stage_c = slider(panel, "Stage C steps")
    checks.visible(stage_c)
    choose(checks, panel, "Model", "SDXL 1.0")
    checks.visible(panel.get_by_label("Refiner", exact=True))
    hidden(checks, stage_c)
    hidden(checks, page.locator("#image-generate"))
    checks.check(lambda: expect(slider(panel, "Steps")).to_have_value("3"))  # the tiny preset's SDXL steps
    checks.shows(page.locator("#image-sd-license"), "CreativeML Open RAIL++-M")

    choose(checks, panel, "Model", "SD3.5 Medium")
    checks.visible(slider(panel, "T5 sequence length"))
    hidden(checks, panel.get_by_label("Refiner", exact=True))
    checks.shows(page.locator("#image-sd-license"), "Stability AI Community License")

    choose(checks, panel, "Model", "SDXL 1.0")
    checks.fill(panel.get_by_label("Prompt", exact=True), "a lighthouse, SDXL")
    checks.fill(slider(panel, "Steps"), "2")
    checks.fill(panel.get_by_label("Width", exact=True), "320")
    page.locator("#image-sd-generate").click()
    checks.image(page.locator("#image-gallery img").first, (320, 256), timeout=JOB_TIMEOUT_MS)
    checks.shows(panel, re.compile(r'"model"\s*:\s*"sdxl"'))
    checks.screenshot("image-sdxl")

    choose(checks, panel, "Model", "Stable Cascade")
    checks.visible(stage_c)
    checks.visible(page.locator("#image-generate"))

    # PNG Info brings the SDXL picture's model back, with its own steps and its 64-px size.
    checks.fill(panel.get_by_label("Prompt", exact=True), "something else")
    checks.expand(panel, "PNG Info")
    saved = max(served.outputs.rglob("*.png"), key=lambda p: p.stat().st_mtime)
    page.locator("#image-png-file input[type=file]").set_input_files(str(saved))
    checks.shows(page.locator(".toast-body.info").filter(has_text="Restored from"),
                 re.compile(r"\(Cascade Studio\): model SDXL 1\.0, steps 2, guidance [0-9.]+, "
                            r"refiner switch point 0\.8, refiner off, prompt, negative prompt.*, size 320×256"))
    checks.check(lambda: expect(slider(panel, "Steps")).to_have_value("2"))
    checks.check(lambda: expect(panel.get_by_label("Prompt", exact=True)).to_have_value("a lighthouse, SDXL"))
    checks.check(lambda: expect(panel.get_by_label("Width", exact=True)).to_have_value("320"))
    checks.visible(page.locator("#image-sd-generate"))
    hidden(checks, stage_c)


def test_an_inpaint_with_a_drawn_mask_keeps_the_rest_of_the_picture(checks: BrowserChecks, served: Served,
                                                                    tmp_path: Path) -> None:
    picture = tmp_path / "room.png"
    source = (np.random.default_rng(5).random((256, 256, 3)) * 255).astype(np.uint8)
    Image.fromarray(source).save(picture)
    page = checks.on("variation").page
    panel = checks.open_tab(TAB)
    page.locator("#variation-image input[type=file]").set_input_files(str(picture))
    checks.image(page.locator("#variation-input-preview img"), (256, 256))
    checks.fill(panel.get_by_label("Prompt", exact=True), "a window")
    choose(checks, panel, "Model for img2img", "SDXL 1.0")
    checks.open_tab("Inpaint", within=panel)
    checks.shows(page.locator("#inpaint-generate"), "Inpaint with SDXL 1.0")

    canvas = page.locator("#inpaint-editor canvas").first
    checks.visible(canvas)
    box = canvas.bounding_box()
    assert box is not None
    # One stroke across the middle of the picture, with the editor's white brush.
    page.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (0.35 + 0.03 * step), box["y"] + box["height"] * 0.5, steps=2)
    page.mouse.up()
    page.locator("#inpaint-generate").click()
    result = page.locator("#variation-gallery img").first
    checks.image(result, (256, 256), timeout=JOB_TIMEOUT_MS)
    checks.shows(panel, re.compile(r'"task"\s*:\s*"sdxl_inpaint"'))

    saved = sorted(served.outputs.rglob("*.png"), key=lambda p: p.stat().st_mtime)[-1]
    with Image.open(saved) as png:
        painted = json.loads(png.info["studio"])["mask_fraction"]
        output = np.asarray(png.convert("RGB"))
    changed = np.abs(output.astype(int) - source.astype(int)).sum(axis=2) > 0
    checks.that(0 < painted < 0.6, f"the drawn mask covers {painted:.1%} of the picture")
    # What changed is the painted area and its narrow seam, nothing else: as much as was painted,
    # give or take the feathered edge, and never the top rows, which the stroke did not reach.
    checks.that(0.5 * painted < changed.mean() < 1.5 * painted + 0.03,
                f"{changed.mean():.1%} of the pixels changed for a mask of {painted:.1%}")
    checks.that(not changed[:48].any(), "pixels far above the stroke changed")
    checks.screenshot("inpaint")
