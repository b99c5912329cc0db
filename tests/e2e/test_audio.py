"""Audio tab in a real Chromium: a generated sound plays in the page with the asked duration, its
waveform shows, and the info carries the seed."""

from __future__ import annotations

from playwright.sync_api import Locator, expect

from tests.e2e.helpers import JOB_TIMEOUT_MS, UI_TIMEOUT_MS, BrowserChecks

#: The page's <audio> element can play (HAVE_FUTURE_DATA) and knows its duration.
AUDIO_PLAYABLE = "a => a.readyState >= 3 && Number.isFinite(a.duration) && a.duration > 0"


def slider(panel: Locator, label: str) -> Locator:
    return panel.get_by_label(f"number input for {label}", exact=True)


def test_a_generated_sound_plays_with_the_asked_duration(checks: BrowserChecks) -> None:
    page = checks.on("audio").page
    panel = checks.open_tab("Audio")
    checks.fill(panel.get_by_label("Prompt", exact=True), "waves on a pebble beach")
    checks.fill(slider(panel, "Length (seconds)"), "3")
    checks.fill(panel.get_by_label("Seed", exact=True), "21")
    page.locator("#audio-generate").click()
    checks.image(page.locator("#audio-waveform img"), timeout=JOB_TIMEOUT_MS)
    # gradio 6.31 keeps a hidden standard <audio> beside its waveform player's; the one that plays has a src.
    audio = page.locator("#audio-result audio[src]")

    def plays() -> float:
        expect(audio).to_be_attached(timeout=UI_TIMEOUT_MS)
        page.wait_for_function(AUDIO_PLAYABLE, arg=audio.element_handle(), timeout=UI_TIMEOUT_MS)
        return float(audio.evaluate("a => a.duration"))

    duration = checks.check(plays)
    checks.that(abs(duration - 3.0) < 0.1, f"the sound lasts {duration:.3f} s, not 3")
    checks.shows(panel, '"seed": 21')
    checks.screenshot("audio")
