"""Keyboard habits in a real Chromium: Ctrl+Enter in a prompt box runs the tab's main action, the
open sub-tab's in Variation, and Esc stops the running job (tabs/keys.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import Browser, expect

from tests.e2e.helpers import JOB_TIMEOUT_MS, UI_TIMEOUT_MS, BrowserChecks, Served, make_it_long

APP_ARGV = ["--tabs", "image,variation,video"]


def test_ctrl_enter_in_the_prompt_generates(checks: BrowserChecks) -> None:
    page = checks.on("keys").page
    panel = checks.open_tab("Image")
    prompt = panel.get_by_label("Prompt", exact=True)
    checks.fill(prompt, "a red lighthouse on a cliff")
    prompt.press("Control+Enter")
    checks.image(page.locator("#image-gallery img").first, (256, 256), timeout=JOB_TIMEOUT_MS)
    checks.shows(page.locator("#image-gallery"), "seed")
    checks.that(prompt.input_value() == "a red lighthouse on a cliff", "Ctrl+Enter typed a new line into the prompt")


def test_ctrl_enter_runs_the_open_sub_tab_of_variation(checks: BrowserChecks, tmp_path: Path) -> None:
    picture = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(3).random((256, 256, 3)) * 255).astype(np.uint8)).save(picture)
    page = checks.on("keys").page
    panel = checks.open_tab("Variation / img2img")
    page.locator("#variation-image input[type=file]").set_input_files(str(picture))
    checks.image(page.locator("#variation-input-preview img"), (256, 256))
    checks.open_tab("img2img", within=panel)
    checks.fill(panel.get_by_label("number input for Strength", exact=True), "0.6")
    prompt = panel.get_by_label("Prompt", exact=True)
    checks.fill(prompt, "a red house")
    prompt.press("Control+Enter")  # the prompt sits above the sub-tabs: img2img is the open one
    checks.shows(page.locator("#variation-gallery"), "seed", timeout=JOB_TIMEOUT_MS)
    checks.shows(checks.panel(), re.compile(r'"strength"\s*:\s*0\.6\b'))


def test_escape_stops_the_running_job(checks: BrowserChecks, served: Served) -> None:
    page = checks.on("keys").page
    panel = checks.open_tab("Image")
    checks.fill(panel.get_by_label("Prompt", exact=True), "a long job")
    make_it_long(checks, panel)
    before = set(served.outputs.rglob("*.png"))
    page.locator("#image-generate").click()
    checks.shows(page.locator("#image-gallery"), re.compile(r"Stage C \(prior\): step \d+/100"), timeout=JOB_TIMEOUT_MS)
    page.keyboard.press("Escape")
    checks.shows(page.locator(".toast-body.info").filter(has_text="Stopping").first,
                 "Stopping after the current step; only images already finished are saved.")
    checks.that(page.locator(".toast-body.error").count() == 0, "Stop showed a red error")
    tracker = page.locator('#image-gallery [data-testid="status-tracker"]')
    checks.that("Error" not in " ".join(tracker.all_inner_texts()), "Stop left an Error pill on the gallery")
    page.wait_for_timeout(3_000)  # a job that ignored Stop would go on stepping and save its images
    checks.that(set(served.outputs.rglob("*.png")) == before, "the job stopped with Esc saved an image")
    checks.check(lambda: expect(page.locator("#image-generate")).to_be_enabled(timeout=UI_TIMEOUT_MS))


def test_the_title_shows_the_percentage_and_a_waiting_job_how_many_are_ahead(
        checks: BrowserChecks, served: Served, browser: Browser) -> None:
    """One bar for the whole job, its percentage in the tab's title, and "1 job ahead, about 12 s"
    for a job waiting behind another page's (the running job's time left at its rate so far)."""
    page = checks.on("keys").page
    panel = checks.open_tab("Image")
    checks.fill(panel.get_by_label("Prompt", exact=True), "a long job")
    make_it_long(checks, panel)
    page.locator("#image-generate").click()
    gallery = page.locator("#image-gallery")
    checks.shows(gallery, re.compile(r"Stage C \(prior\): step \d+/100 · \d+% of the job"), timeout=JOB_TIMEOUT_MS)
    checks.check(page.wait_for_function, "() => /^\\d+% · Cascade Studio$/.test(document.title)",
                 timeout=UI_TIMEOUT_MS)

    other = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    try:
        other.goto(served.url)
        other.get_by_role("tab", name="Image", exact=True).click()
        other.get_by_label("Prompt", exact=True).first.fill("a second job")
        other.locator("#image-generate").click()
        waiting = other.locator('#image-gallery [data-testid="status-tracker"]')
        # gradio's own elapsed timer stays after the "|" ("1 job ahead, about 12 s | 0.4s").
        checks.check(lambda: expect(waiting).to_contain_text(
            re.compile(r"1 job ahead, about \d+ (s|min) \| *[\d.]+"), timeout=JOB_TIMEOUT_MS))
    finally:
        page.locator("#image-stop").click()
        other.context.close()
    checks.check(page.wait_for_function, "() => document.title === 'Cascade Studio'", timeout=JOB_TIMEOUT_MS)
