"""Image tab in a real Chromium: a generated image of the size asked for, live previews, a bad
input that shows an error naming the field while the app keeps working, PNG Info restoring the
fields, aspect-ratio choices that set the sizes they show, galleries that show results whole, and
Generate on a phone's first screen."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
from PIL import Image, PngImagePlugin
from playwright.sync_api import expect

from tabs.image import aspect_choices
from tests.e2e.helpers import (
    JOB_TIMEOUT_MS,
    UI_TIMEOUT_MS,
    BrowserChecks,
    Served,
    changes,
    generate_image,
    make_it_long,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator

    from tests.conftest import Tally

PREVIEW = re.compile(r"preview: stage C step (\d+)/(\d+)")


def test_generate_shows_a_real_image_of_the_asked_size(checks: BrowserChecks) -> None:
    name = generate_image(checks, "a red lighthouse on a cliff", size=(384, 256))
    checks.that(name.endswith(".png"), f"the result is served as a PNG, got {name!r}")
    checks.shows(checks.panel(), re.compile(r'"seed"\s*:\s*\d+'))  # the info JSON carries the seed used
    checks.screenshot("image")


def test_live_previews_appear_before_the_result(checks: BrowserChecks) -> None:
    page = checks.on("image").page
    panel = checks.open_tab("Image")
    checks.fill(panel.get_by_label("Prompt", exact=True), "a blue boat at dusk")
    panel.get_by_label("Live previews").check()
    checks.record("gallery", "#image-gallery")
    page.locator("#image-generate").click()
    checks.shows(page.locator("#image-gallery"), "seed", timeout=JOB_TIMEOUT_MS)
    checks.image(page.locator("#image-gallery img").first, (256, 256))

    seen = checks.recorded("gallery")
    steps = changes(int(m.group(1)) for text, images in seen if images for m in PREVIEW.finditer(text))
    checks.that(len(steps) >= 1, f"no preview with an image was shown; the gallery showed {changes(seen)}")
    checks.that(steps == sorted(steps), f"previews went backwards: steps {steps}")
    last = next(i for i, (text, _) in enumerate(seen) if PREVIEW.search(text))
    checks.that(any("seed" in text for text, _ in seen[last:]), "the final images did not replace the previews")


def test_bad_width_shows_an_error_naming_the_field_and_the_app_keeps_working(checks: BrowserChecks) -> None:
    page = checks.on("image").page
    panel = checks.open_tab("Image")
    checks.fill(panel.get_by_label("Prompt", exact=True), "a cat")
    checks.expand(panel, "Advanced")
    checks.fill(panel.get_by_label("Width", exact=True), "100")
    page.locator("#image-generate").click()
    toast = page.locator(".toast-body.error")
    # Names the field and the value (today: "width: must be between 256 and 2048, got 100").
    checks.shows(toast, re.compile(r"\bwidth\b.*\b100\b"), timeout=JOB_TIMEOUT_MS)
    checks.that(page.locator("#image-gallery img").count() == 0, "a failed job still showed an image")
    checks.screenshot("image-error", full_page=False)  # the toast is a fixed overlay
    toast.locator(".toast-close").first.click()
    checks.check(lambda: expect(toast).to_have_count(0, timeout=UI_TIMEOUT_MS))

    checks.fill(panel.get_by_label("Width", exact=True), "256")
    page.locator("#image-generate").click()
    checks.image(page.locator("#image-gallery img").first, (256, 256), timeout=JOB_TIMEOUT_MS)
    checks.that(page.locator(".toast-body.error").count() == 0, "the retry showed an error too")


def test_recent_outputs_are_listed_again_after_a_reload(checks: BrowserChecks) -> None:
    """The history is filled at each page load (a private load event), so a reload still shows it."""
    page = checks.on("image").page
    name = generate_image(checks, "a green field")
    page.reload()
    panel = checks.open_tab("Image")
    checks.expand(panel, "Recent outputs")
    history = page.locator("#image-history")
    checks.visible(history.locator(f'img[src$="/{name}"]').first)
    checks.image(history.locator(f'img[src$="/{name}"]').first)


def test_stop_is_not_a_failure_and_the_previous_result_stays(checks: BrowserChecks) -> None:
    """Stop mid-job with live previews on: a neutral notice, no Error pill, and the gallery shows
    the previous result again instead of the last preview."""
    page = checks.on("image").page
    generate_image(checks, "a red lighthouse on a cliff")
    gallery = page.locator("#image-gallery")
    before = gallery.inner_text()
    panel = checks.panel()
    panel.get_by_label("Live previews").check()
    # 1024², four times the pixels of 512²: on a loaded 2-core CI machine the previews reached the
    # page so late that the 512² job had ended before Stop landed (no job left to stop, no notice).
    make_it_long(checks, panel, side=1024)
    page.locator("#image-generate").click()
    checks.shows(gallery, PREVIEW, timeout=JOB_TIMEOUT_MS)
    page.locator("#image-stop").click()
    checks.shows(page.locator(".toast-body.info").filter(has_text="Stopping").first,
                 "only images already finished are saved")
    checks.check(lambda: expect(gallery).not_to_contain_text("preview:", timeout=UI_TIMEOUT_MS))
    checks.shows(gallery, re.compile(re.escape(before.strip().splitlines()[0]) if before.strip() else "seed"))
    checks.that(page.locator(".toast-body.error").count() == 0, "Stop showed a red error")
    tracker = gallery.locator('[data-testid="status-tracker"]')
    checks.that("Error" not in " ".join(tracker.all_inner_texts()), "Stop left an Error pill on the gallery")
    checks.screenshot("image-stopped", full_page=False)


def test_stop_in_a_batch_keeps_and_shows_the_images_already_finished(checks: BrowserChecks) -> None:
    """Two images, Stop while the second is made: the first is shown and saved, as AUTOMATIC1111's
    Interrupt keeps a batch's finished images, and the notice says so."""
    page = checks.on("image").page
    panel = checks.open_tab("Image")
    checks.fill(panel.get_by_label("Prompt", exact=True), "two lighthouses, one after the other")
    make_it_long(checks, panel)
    checks.fill(panel.get_by_label("number input for Images", exact=True), "2")
    page.locator("#image-generate").click()
    gallery = page.locator("#image-gallery")
    checks.shows(gallery, re.compile(r"Image 2/2 · Stage C \(prior\): step \d+/100"), timeout=JOB_TIMEOUT_MS)
    page.locator("#image-stop").click()
    checks.shows(page.locator(".toast-body.info").filter(has_text="Stopped after").first,
                 "Stopped after 1 of 2 images; the finished one is kept and saved.", timeout=JOB_TIMEOUT_MS)
    checks.check(lambda: expect(gallery.locator("img")).to_have_count(1, timeout=UI_TIMEOUT_MS))
    checks.image(gallery.locator("img").first, (512, 512))
    checks.that(page.locator(".toast-body.error").count() == 0, "Stop showed a red error")
    checks.fill(panel.get_by_label("number input for Images", exact=True), "1")
    checks.screenshot("image-stopped-batch", full_page=False)


# ----- PNG Info, aspect ratios, galleries, phone (issue #14, items 13–16) ------------------------

#: An iPhone 12-15-sized screen, in CSS pixels.
PHONE = {"width": 390, "height": 844}
SIZE = re.compile(r"\((\d+)×(\d+)\)")


def a1111_png(path: Path, text: str) -> Path:
    """A PNG carrying ``text`` as AUTOMATIC1111 writes it (a ``parameters`` text chunk)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (96, 64), "teal").save(path, pnginfo=info)
    return path


def drop_png(checks: BrowserChecks, panel: "Locator", path: Path) -> None:
    """Open PNG Info (gradio builds an accordion's contents when it opens) and drop ``path`` in."""
    if not checks.page.locator("#image-png-file").is_visible():
        checks.expand(panel, "PNG Info")
    checks.page.locator("#image-png-file input[type=file]").set_input_files(str(path))


def value_of(checks: BrowserChecks, field: "Locator", expected: str) -> None:
    checks.check(lambda: expect(field).to_have_value(expected, timeout=UI_TIMEOUT_MS))


def newest_png(served: Served) -> Path:
    return max(served.outputs.rglob("*.png"), key=lambda p: (p.parent.name, p.name))


def test_png_info_restores_an_a1111_files_fields_and_generate_uses_them(
        checks: BrowserChecks, served: Served, tmp_path: Path) -> None:
    page = checks.on("image").page
    panel = checks.open_tab("Image")
    path = a1111_png(tmp_path / "castle.png", "a castle at dusk\nNegative prompt: fog\nSteps: 5, Sampler: Euler a, "
                                              "CFG scale: 7.25, Seed: 4242, Size: 384x250, Model: dreamy")
    drop_png(checks, panel, path)
    toast = page.locator(".toast-body.info").filter(has_text="Restored from")
    checks.shows(toast, "Restored from castle.png (AUTOMATIC1111 layout): prompt, negative prompt, size 384×256, "
                        "Stage C steps 5, Stage C guidance 7.2, seed 4242.")
    checks.shows(toast, "the file's size 384×250 became 384×256")
    checks.shows(toast, "Stage C guidance 7.25 became 7.2 (the slider's step is 0.1)")
    checks.shows(page.locator("#image-png-params"), "Parameters in castle.png")
    checks.shows(page.locator("#image-png-params"), "dreamy")  # what has no field is still shown
    value_of(checks, panel.get_by_label("Prompt", exact=True), "a castle at dusk")
    value_of(checks, panel.get_by_label("Negative prompt", exact=True), "fog")
    value_of(checks, panel.get_by_label("Seed", exact=True), "4242")
    checks.check(lambda: expect(panel.get_by_label("3:2 (384×256)", exact=True)).to_be_checked(timeout=UI_TIMEOUT_MS))
    checks.expand(panel, "Advanced")
    value_of(checks, panel.get_by_label("Width", exact=True), "384")
    value_of(checks, panel.get_by_label("Height", exact=True), "256")
    value_of(checks, panel.get_by_label("number input for Stage C steps"), "5")
    value_of(checks, panel.get_by_label("number input for Stage C guidance"), "7.2")
    checks.screenshot("image-png-info", full_page=False)

    page.locator("#image-generate").click()
    checks.image(page.locator("#image-gallery img").first, (384, 256), timeout=JOB_TIMEOUT_MS)
    checks.shows(page.locator("#image-gallery"), "seed 4242")
    with Image.open(newest_png(served)) as result:
        used = json.loads(result.text["studio"])
    checks.that({k: used[k] for k in ("prompt", "negative_prompt", "prior_steps", "prior_guidance", "seed")} ==
                {"prompt": "a castle at dusk", "negative_prompt": "fog", "prior_steps": 5, "prior_guidance": 7.2,
                 "seed": 4242}, f"the job did not use the restored fields: {used}")


def test_png_info_restores_our_own_result_and_refuses_a_file_it_cannot_read(
        checks: BrowserChecks, served: Served, tmp_path: Path) -> None:
    page = checks.on("image").page
    generate_image(checks, "a green owl", size=(256, 384))
    saved = newest_png(served)
    with Image.open(saved) as result:
        seed = json.loads(result.text["studio"])["seed"]
    panel = checks.panel()
    prompt = panel.get_by_label("Prompt", exact=True)
    checks.fill(prompt, "something else")
    checks.fill(panel.get_by_label("Width", exact=True), "512")
    drop_png(checks, panel, saved)
    checks.shows(page.locator(".toast-body.info").filter(has_text="Restored from"),
                 f"Restored from {saved.name} (Cascade Studio): prompt, negative prompt (empty), size 256×384, "
                 f"Stage C steps 4, Stage B steps 3, Stage C guidance 4, Stage B guidance 0, seed {seed}.")
    value_of(checks, prompt, "a green owl")
    value_of(checks, panel.get_by_label("Width", exact=True), "256")
    value_of(checks, panel.get_by_label("Height", exact=True), "384")
    value_of(checks, panel.get_by_label("Seed", exact=True), str(seed))
    checks.check(lambda: expect(panel.get_by_label("2:3 (256×384)", exact=True)).to_be_checked(timeout=UI_TIMEOUT_MS))

    (tmp_path / "notes.png").write_text("hello, I am text")
    page.locator("#image-png-file input[type=file]").set_input_files(str(tmp_path / "notes.png"))
    checks.shows(page.locator(".toast-body.error"), re.compile(r"\(image\): notes\.png is not a PNG file"))
    value_of(checks, prompt, "a green owl")  # nothing restored from it


def test_aspect_choices_set_the_sizes_they_show_and_typing_a_size_leaves_the_choice(checks: BrowserChecks) -> None:
    page = checks.on("image").page
    panel = checks.open_tab("Image")
    checks.expand(panel, "Advanced")
    width, height = panel.get_by_label("Width", exact=True), panel.get_by_label("Height", exact=True)
    checked = page.locator("#image-aspect input:checked")
    checks.check(lambda: expect(panel.get_by_label("1:1 (256×256)", exact=True)).to_be_checked())
    shown = [label.strip() for label in page.locator("#image-aspect label").all_inner_texts() if SIZE.search(label)]
    checks.that(shown == aspect_choices(256), f"the choices shown are {shown}")
    for label in shown:
        w, h = (int(side) for side in SIZE.search(label).groups())  # type: ignore[union-attr]
        checks.that(w % 128 == 0 and h % 128 == 0 and 256 <= min(w, h), f"{label} is not a size the model takes")
        panel.get_by_label(label, exact=True).check()
        value_of(checks, width, str(w))
        value_of(checks, height, str(h))
    checks.fill(width, "640")  # 640×256 is no choice's size: none may stay selected
    checks.check(lambda: expect(checked).to_have_count(0, timeout=UI_TIMEOUT_MS))
    checks.fill(width, "384")  # 384×256 is the 3:2 choice's (and, nearest, 4:3's and 16:9's)
    checks.check(lambda: expect(panel.get_by_label("3:2 (384×256)", exact=True)).to_be_checked(timeout=UI_TIMEOUT_MS))
    checks.fill(height, "300")
    checks.check(lambda: expect(checked).to_have_count(0, timeout=UI_TIMEOUT_MS))


def test_galleries_show_results_whole_not_cropped(checks: BrowserChecks) -> None:
    page = checks.on("image").page
    panel = checks.open_tab("Image")
    gallery = page.locator("#image-gallery")
    checks.that("Drop" not in gallery.inner_text(), "the result gallery offers an upload")
    checks.fill(panel.get_by_label("Prompt", exact=True), "a long train on a bridge")
    panel.get_by_label("21:9 (512×256)", exact=True).check()
    page.locator("#image-generate").click()
    result = gallery.locator("img").first
    checks.image(result, (512, 256), timeout=JOB_TIMEOUT_MS)
    fit = "img => getComputedStyle(img).objectFit"
    checks.that(result.evaluate(fit) == "contain", f"the result is drawn with object-fit {result.evaluate(fit)}")
    checks.expand(panel, "Recent outputs")
    recent = page.locator("#image-history img").first
    checks.image(recent)
    checks.that(recent.evaluate(fit) == "contain", f"Recent draws with object-fit {recent.evaluate(fit)}")
    checks.screenshot("image-wide")


@pytest.fixture()
def phone(browser: "Browser", served: Served, tally: "Tally", artifacts_dir: Path) -> Iterator[BrowserChecks]:
    """The app on a phone-sized touch screen (390×844 CSS pixels), with counted checks."""
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    counted = BrowserChecks(context.new_page(), artifacts_dir / "screenshots")
    counted.page.goto(served.url)
    counted.page.locator("[role=tab]").first.wait_for(timeout=30_000)
    try:
        yield counted
    finally:
        counted.report(tally)
        context.close()


def test_on_a_phone_generate_is_on_the_first_screen(phone: BrowserChecks) -> None:
    """Generate (and Stop) sit right under the prompt, above the settings, so a phone shows them
    without scrolling; tapping Generate runs the job."""
    page = phone.on("image").page
    panel = phone.open_tab("Image")
    phone.that(page.evaluate("() => window.scrollY") == 0, "the page opened scrolled")
    for button in ("#image-generate", "#image-stop"):
        phone.visible(page.locator(button))
        box = page.locator(button).bounding_box()
        phone.that(box is not None and box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"],
                   f"{button} is at {box}, outside the first {PHONE['height']} px of the screen")
    generate = page.locator("#image-generate").bounding_box()
    advanced = panel.get_by_text("Advanced", exact=True).bounding_box()
    phone.that(generate is not None and advanced is not None and generate["y"] < advanced["y"],
               "Generate is below the settings")
    phone.screenshot("image-phone", full_page=False)
    phone.fill(panel.get_by_label("Prompt", exact=True), "a small boat")
    page.locator("#image-generate").tap()
    phone.image(page.locator("#image-gallery img").first, (256, 256), timeout=JOB_TIMEOUT_MS)
