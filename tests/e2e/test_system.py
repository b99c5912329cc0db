"""System tab in a real Chromium: its figures and component table refresh on their own while a
job loads models in another tab (no page reload), and Unload / Unload all put components back
on disk, in the table and in the device-memory figure, within a couple of seconds, with a toast
that names what they freed.

The app runs with a device-memory budget, so the free figure is the budget less what is loaded:
exact, unlike the live RAM figures, which move with everything else on the machine.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from backends.runtime.probe import format_bytes
from tabs.system import shown_placement
from tests.e2e.helpers import UI_TIMEOUT_MS, BrowserChecks, Served, generate_image

if TYPE_CHECKING:
    from tests.conftest import Tally

#: Far above what the tiny models need (about 11 MB), and under 1 GB so the figures are in MB.
APP_ARGV = ["--tabs", "image,system", "--vram-budget", "0.9"]
#: The tab refreshes every 2 s (``tabs/system.py``); a few ticks on a loaded machine.
REFRESH_TIMEOUT_MS = 15_000
#: An unload of the tiny models, click to toast and table (about a second: one garbage
#: collection of the app's heap, then the status).
UNLOAD_SECONDS = 2.0
#: Gradio's info toasts (``gr.Info``).
INFO_TOAST = ".toast-body.info"
DEVICE = re.compile(r"Device memory \(CPU\):\s*([\d.]+) (MB|GB) free of ([\d.]+) (MB|GB)")
UNITS_MB = {"MB": 1.0, "GB": 1024.0}
#: Every cell of the component table: [[component, placement, size, last used], ...].
READ_ROWS = ("Array.from(document.querySelectorAll('#system-components .virtual-row'))"
             ".map(row => Array.from(row.querySelectorAll('[role=gridcell]')).map(cell => cell.innerText.trim()))")
TABLE_ROWS = f"() => {READ_ROWS}"
#: True once every {component: placement} given is a row of the table.
SHOWS_PLACEMENTS = (f"expected => {{ const rows = {READ_ROWS}; return Object.entries(expected)"
                    ".every(([name, placement]) => rows.some(([n, p]) => n === name && p === placement)); }")
#: True once the summary's free device memory is within 0.2 MB of the figure given (in MB).
SHOWS_FREE = ("([pattern, expected]) => { const m = new RegExp(pattern)"
              ".exec(document.querySelector('#system-summary').innerText);"
              " return m !== null && m[2] === 'MB' && Math.abs(parseFloat(m[1]) - expected) <= 0.2; }")


def device_memory(checks: BrowserChecks) -> tuple[float, float]:
    """(free, total) device memory in MB, as the summary shows them."""
    text = checks.page.locator("#system-summary").inner_text()
    match = DEVICE.search(text)
    assert match, f"no device memory figure in {text!r}"
    free, free_unit, total, total_unit = match.groups()
    return float(free) * UNITS_MB[free_unit], float(total) * UNITS_MB[total_unit]


def table(checks: BrowserChecks) -> dict[str, dict[str, Any]]:
    """The component table by name: placement, size in MB and the last-used text."""
    rows = {}
    for name, placement, size, used in checks.page.evaluate(TABLE_ROWS):
        if name:
            number, unit = size.split()
            rows[name] = {"placement": placement, "mb": float(number) * UNITS_MB[unit], "used": used}
    return rows


def wait_for_placements(checks: BrowserChecks, expected: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Wait (without reloading) until the table shows these placements; returns the table."""
    checks.check(checks.page.wait_for_function, SHOWS_PLACEMENTS, arg=expected, timeout=REFRESH_TIMEOUT_MS)
    return table(checks)


def on_device(served: Served) -> str:
    """What the table shows for a component on the compute device (``gpu`` in ``/status``)."""
    shown = shown_placement("gpu", served.studio.status()["device"])
    # Without CUDA the compute device is the CPU, and the table must not say gpu.
    assert shown == ("gpu" if served.studio.device.type == "cuda" else "cpu (device)"), shown
    return shown


def loaded_cascade(checks: BrowserChecks, served: Served) -> dict[str, dict[str, Any]]:
    """Generate an image, open the System tab and wait for the cascade to show as loaded."""
    generate_image(checks, "a lighthouse")
    checks.on("system").open_tab("System")
    names = ("text_encoder", "prior", "decoder", "vqgan")
    return wait_for_placements(checks, {f"cascade.{name}": on_device(served) for name in names})


def expected_confirmation(served: Served, name: str) -> str:
    """The toast an unload of ``name`` should show, from the app's own ``/status`` before it."""
    loaded = [m for m in served.studio.status()["models"] if m["placement"] != "disk"
              and (name == "all" or m["name"] == name)]
    if not loaded:
        return "Nothing was loaded"
    return f"Unloaded {', '.join(m['name'] for m in loaded)} ({format_bytes(sum(m['bytes'] for m in loaded))} freed)"


def timed_unload(checks: BrowserChecks, button: str, toast: str, placements: dict[str, str]) -> float:
    """Click ``button``; seconds until its toast says ``toast`` and the table shows ``placements``.

    Waits up to the UI timeout, so a slow unload fails on its measured time, not on a timeout.
    """
    page = checks.page
    started = time.monotonic()
    checks.panel().get_by_role("button", name=button, exact=True).click()
    checks.shows(page.locator(INFO_TOAST).filter(has_text=toast), toast, timeout=UI_TIMEOUT_MS)
    wait_for_placements(checks, placements)
    return time.monotonic() - started


def test_figures_and_table_refresh_while_a_job_loads_models(checks: BrowserChecks, served: Served) -> None:
    checks.on("system").open_tab("System")
    checks.shows(checks.page.locator("#system-summary"), "Preset: tiny")
    if served.studio.status()["models"]:  # another test of this module loaded the cascade
        served.studio.unload("all")
    device = on_device(served)
    expect(checks.page.locator("#system-components")).not_to_contain_text(device, timeout=REFRESH_TIMEOUT_MS)
    free, total = device_memory(checks)
    checks.that(free == total, f"nothing is loaded, yet {free} MB of {total} MB are free")

    rows = loaded_cascade(checks, served)  # the Image tab runs; this page is never reloaded
    if served.studio.device.type != "cuda":
        checks.that(all(row["placement"] != "gpu" for row in rows.values()),
                    f"the table says gpu on a machine without CUDA: {rows}")
    loaded = sum(row["mb"] for row in rows.values() if row["placement"] == device)
    checks.that(all(row["mb"] > 0 for row in rows.values()), f"a loaded component has no size: {rows}")
    checks.that(all(re.fullmatch(r"\d\d:\d\d:\d\d", row["used"]) for row in rows.values()),
                f"a loaded component shows no last-used time: {rows}")
    checks.check(lambda: expect(checks.page.locator("#system-summary")).not_to_contain_text(
        f"{free:.1f} MB free", timeout=REFRESH_TIMEOUT_MS))
    now_free, now_total = device_memory(checks)
    checks.that(now_total == total, f"the budget changed from {total} to {now_total} MB")
    # Each figure is rounded to 0.1 MB.
    checks.that(abs(total - now_free - loaded) <= 0.1 * (len(rows) + 1),
                f"{total - now_free:.1f} MB used, but the table sums to {loaded:.1f} MB: {rows}")
    checks.screenshot("system")


def test_unload_one_component_then_all(checks: BrowserChecks, served: Served) -> None:
    page = checks.page
    rows = loaded_cascade(checks, served)
    device = on_device(served)
    free, total = device_memory(checks)
    panel = checks.panel()

    panel.get_by_role("combobox", name="Component").click()
    page.get_by_role("option", name="cascade.prior", exact=True).click()
    toast = expected_confirmation(served, "cascade.prior")
    checks.that(toast.startswith("Unloaded cascade.prior ("), f"the prior is not loaded: {toast}")
    took = timed_unload(checks, "Unload", toast, {"cascade.prior": "disk", "cascade.decoder": device})
    checks.that(took <= UNLOAD_SECONDS, f"Unload took {took:.2f} s (at most {UNLOAD_SECONDS} s)")
    after = table(checks)
    checks.that(after["cascade.prior"]["placement"] == "disk", f"prior not unloaded: {after}")
    checks.that(all(row["placement"] == device for name, row in after.items() if name != "cascade.prior"),
                f"Unload of one component dropped others: {after}")
    expected_free = free + rows["cascade.prior"]["mb"]
    checks.check(page.wait_for_function, SHOWS_FREE, arg=[DEVICE.pattern, expected_free], timeout=REFRESH_TIMEOUT_MS)

    toast = expected_confirmation(served, "all")
    checks.that(toast.startswith("Unloaded cascade.text_encoder, cascade.decoder, cascade.vqgan ("),
                f"Unload all would not name the three still loaded: {toast}")
    took = timed_unload(checks, "Unload all", toast, {name: "disk" for name in rows})
    checks.that(took <= UNLOAD_SECONDS, f"Unload all took {took:.2f} s (at most {UNLOAD_SECONDS} s)")
    after = table(checks)
    checks.that(all(row["placement"] == "disk" for row in after.values()), f"Unload all left some: {after}")
    checks.check(lambda: expect(page.locator("#system-summary")).to_contain_text(
        re.compile(rf"{total:.1f} MB free of {total:.1f} MB"), timeout=REFRESH_TIMEOUT_MS))
    placements = {model["name"]: model["placement"] for model in served.studio.status()["models"]}
    checks.that(set(placements.values()) == {"disk"}, f"the UI shows disk, the app says {placements}")


def test_unload_all_before_anything_is_loaded_is_not_an_error(launch_app: Callable[..., str], page: Page,
                                                               tally: "Tally", artifacts_dir: Path) -> None:
    """A fresh app of its own (the module's app has loaded models): Unload all is then a no-op, not an error."""
    checks = BrowserChecks(page, artifacts_dir / "screenshots").on("system")
    try:
        page.goto(launch_app("--tabs", "system"))  # a fresh app: nothing loaded yet
        # Filled by the page-load event: the page is connected, so the click below is not lost.
        checks.shows(page.locator("#system-summary"), "Preset: tiny")
        started = time.monotonic()
        page.get_by_role("button", name="Unload all", exact=True).click()
        checks.shows(page.locator(INFO_TOAST), "Nothing was loaded", timeout=UI_TIMEOUT_MS)
        took = time.monotonic() - started
        checks.that(took <= UNLOAD_SECONDS, f"Unload all of nothing took {took:.2f} s (at most {UNLOAD_SECONDS} s)")
        error = page.locator(".toast-body.error")
        try:
            error.first.wait_for(timeout=3_000)  # the unload itself takes milliseconds
        except PlaywrightTimeout:
            pass
        checks.that(error.count() == 0, f"Unload all showed: {error.all_inner_texts()}")
    finally:
        checks.report(tally)
