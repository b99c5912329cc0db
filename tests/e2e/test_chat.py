"""Chat tab in a real Chromium (tiny StableLM): a reply that visibly grows while it streams, with
its figures; Regenerate replaces the reply; Clear empties the chat, also while a reply streams."""

from __future__ import annotations

import logging
import re

from playwright.sync_api import expect

from tests.e2e.helpers import JOB_TIMEOUT_MS, UI_TIMEOUT_MS, BrowserChecks, changes

logger = logging.getLogger(__name__)

APP_ARGV = ["--tabs", "chat"]
#: Samples the length of the last reply every 5 ms into ``window.__lengths``: a reply streams for
#: a fraction of a second to a few seconds here, so a poll from Python would see few states.
SAMPLE_REPLY = """() => {
  window.__lengths = [];
  window.__sampler = setInterval(() => {
    const replies = document.querySelectorAll('#chat-bot [data-testid="bot"]');
    if (replies.length) window.__lengths.push(replies[replies.length - 1].innerText.length);
  }, 5);
}"""
#: Long enough to stream over several updates: greedy, the tiny model does from 200 tokens a
#: second (this machine, busy) to 5,000 (idle), and the tab sends at most 30 updates a second.
REPLY_TOKENS = 600
#: All the context leaves after a short prompt (the tiny model's window is 1,024 tokens).
LONGEST_REPLY = 960
#: Clicks Clear from inside the page as soon as the reply has some text (a round trip through
#: Python could come after a fast reply has ended), noting the figures line at that moment and
#: then every text the chat shows in ``window.__afterClear``.
CLEAR_MID_STREAM = """() => {
  window.__afterClear = null;
  window.__statsAtClear = null;
  const chat = document.querySelector('#chat-bot');
  new MutationObserver(() => {
    if (window.__afterClear !== null) {
      window.__afterClear.push(chat.innerText);
      return;
    }
    const replies = chat.querySelectorAll('[data-testid="bot"]');
    if (replies.length && replies[replies.length - 1].innerText.trim().length > 10) {
      window.__statsAtClear = document.querySelector('#chat-stats').innerText;
      window.__afterClear = [];
      document.querySelector('#chat-clear').click();
    }
  }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


#: Clicks Stop from inside the page as soon as the newest reply has some text.
STOP_MID_STREAM = """() => {
  window.__stopped = false;
  const chat = document.querySelector('#chat-bot');
  const before = chat.querySelectorAll('[data-testid="bot"]').length;
  const observer = new MutationObserver(() => {
    const replies = chat.querySelectorAll('[data-testid="bot"]');
    if (replies.length > before && replies[replies.length - 1].innerText.trim().length > 0) {
      observer.disconnect();
      document.querySelector('#chat-stop').click();
      window.__stopped = true;
    }
  });
  observer.observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def set_reply(checks: BrowserChecks, max_new_tokens: int) -> None:
    """Greedy replies of ``max_new_tokens``: with sampling, the tiny random model often ends its
    turn after a dozen tokens; greedy, it never does within its context."""
    panel = checks.panel()
    if not panel.get_by_label("number input for Temperature").is_visible():
        checks.expand(panel, "Settings")
    for label, value in (("Temperature", 0), ("Max new tokens", max_new_tokens)):
        field = panel.get_by_label(f"number input for {label}")
        checks.fill(field, str(value))
        field.press("Enter")  # a slider's number box commits on Enter
        checks.check(lambda: expect(field).to_have_value(str(value), timeout=UI_TIMEOUT_MS))


def send(checks: BrowserChecks, text: str) -> None:
    checks.page.locator("#chat-message textarea").fill(text)
    checks.page.locator("#chat-send").click()


def wait_until_done(checks: BrowserChecks) -> None:
    """Wait for the reply event to close (the Chatbot's status tracker hides).

    The figures show with the last update; the event closes just after, with a message that
    repeats its last output. Waiting for it makes the next click act on the finished exchange.
    """
    tracker = checks.page.locator('#chat-bot [data-testid="status-tracker"]').first
    checks.check(lambda: expect(tracker).to_have_class(re.compile(r"\bhide\b"), timeout=UI_TIMEOUT_MS))


def test_the_reply_grows_while_it_streams(checks: BrowserChecks) -> None:
    page = checks.on("chat").page
    checks.shows(page.locator("#chat-model"), "Tiny StableLM")
    set_reply(checks, REPLY_TOKENS)
    page.evaluate(SAMPLE_REPLY)
    send(checks, "Tell me a story about the sea")
    stats = page.locator("#chat-stats")
    checks.shows(stats, "tokens/s", timeout=JOB_TIMEOUT_MS)
    lengths = changes(page.evaluate("() => { clearInterval(window.__sampler); return window.__lengths; }"))

    final = len(page.locator('#chat-bot [data-testid="bot"]').last.inner_text())
    logger.info("reply lengths seen while streaming: %s (final %d)", lengths, final)
    partial = [n for n in lengths if 0 < n < final]
    checks.that(len(set(partial)) >= 2,
                f"saw too few partial replies: lengths {lengths}, final {final}; figures: {stats.inner_text()}")
    checks.that(partial == sorted(partial), f"the reply shrank while streaming: {lengths}")
    checks.that(lengths[-1] == final, f"last sample {lengths[-1]} is not the final reply ({final})")
    checks.shows(page.locator("#chat-bot"), "Tell me a story about the sea")
    checks.check(lambda: expect(page.locator("#chat-message textarea")).to_have_value("", timeout=UI_TIMEOUT_MS))
    checks.screenshot("chat")


def test_regenerate_replaces_the_reply_and_clear_empties_the_chat(checks: BrowserChecks) -> None:
    page = checks.on("chat").page
    send(checks, "Hello there")
    stats = page.locator("#chat-stats")
    checks.shows(stats, "tokens/s", timeout=JOB_TIMEOUT_MS)
    wait_until_done(checks)
    first = stats.inner_text()
    page.locator("#chat-regenerate").click()
    checks.check(lambda: expect(stats).not_to_have_text(first, timeout=UI_TIMEOUT_MS))  # new figures
    checks.shows(stats, "tokens/s")
    checks.that(page.locator("#chat-bot").inner_text().count("Hello there") == 1,
                "Regenerate appended a second exchange instead of replacing the reply")
    wait_until_done(checks)
    page.locator("#chat-clear").click()
    checks.check(lambda: expect(page.locator("#chat-bot")).not_to_contain_text("Hello there", timeout=UI_TIMEOUT_MS))
    checks.check(lambda: expect(stats).to_have_text("", timeout=UI_TIMEOUT_MS))


def test_clear_while_a_reply_streams_stops_it_and_empties_the_chat(checks: BrowserChecks) -> None:
    page = checks.on("chat").page
    set_reply(checks, LONGEST_REPLY)
    page.evaluate(CLEAR_MID_STREAM)
    send(checks, "Tell me a long story")
    checks.check(page.wait_for_function, "() => window.__afterClear !== null", timeout=JOB_TIMEOUT_MS)
    at_click = page.evaluate("() => window.__statsAtClear")
    checks.that("Generating" in at_click, f"Clear was clicked after the reply ended ({at_click!r})")
    chat = page.locator("#chat-bot")
    checks.check(lambda: expect(chat).not_to_contain_text("Tell me a long story", timeout=UI_TIMEOUT_MS))

    set_reply(checks, 16)
    send(checks, "Hello there")  # queued behind the long reply unless Clear stopped it
    checks.shows(page.locator("#chat-stats"), "tokens/s", timeout=JOB_TIMEOUT_MS)
    wait_until_done(checks)
    checks.shows(chat, "Hello there")
    checks.check(lambda: expect(chat).not_to_contain_text("Tell me a long story"))
    seen = page.evaluate("() => window.__afterClear")
    cleared = next(i for i, text in enumerate(seen) if "Tell me a long story" not in text)
    came_back = [text for text in seen[cleared:] if "Tell me a long story" in text]
    checks.that(not came_back, f"the cleared reply came back {len(came_back)} times while it streamed on")


def test_enter_sends_and_shift_enter_adds_a_line(checks: BrowserChecks) -> None:
    page = checks.on("chat").page
    set_reply(checks, 8)
    box = page.locator("#chat-message textarea")
    box.click()
    box.type("first line")
    box.press("Shift+Enter")
    box.type("second line")
    checks.check(lambda: expect(box).to_have_value("first line\nsecond line", timeout=UI_TIMEOUT_MS))
    checks.that(page.locator('#chat-bot [data-testid="user"]').count() == 0, "Shift+Enter sent the message")
    box.press("Enter")
    checks.shows(page.locator("#chat-stats"), "tokens/s", timeout=JOB_TIMEOUT_MS)
    checks.check(lambda: expect(box).to_have_value("", timeout=UI_TIMEOUT_MS))
    user = page.locator('#chat-bot [data-testid="user"]').last
    checks.shows(user, "first line")
    checks.shows(user, "second line")


def test_an_empty_message_or_regenerate_is_a_notice_and_the_chat_stays_usable(checks: BrowserChecks) -> None:
    page = checks.on("chat").page
    box = page.locator("#chat-message textarea")
    box.fill("   ")
    box.press("Enter")
    warning = page.locator(".toast-body.warning")
    checks.shows(warning, "Message (message): is empty")
    page.locator("#chat-regenerate").click()
    checks.shows(warning, "Nothing to regenerate yet")
    checks.that(page.locator(".toast-body.error").count() == 0, "a refused message showed a red error")
    for element in ("#chat-bot", "#chat-message"):
        checks.that(page.locator(f'{element} [data-testid="status-tracker"].error').count() == 0
                    and "Error" not in page.locator(f'{element} [data-testid="status-tracker"]').all_inner_texts(),
                    f"{element} shows gradio's Error pill after a refused message")
    checks.screenshot("chat-empty-message", full_page=False)
    set_reply(checks, 8)
    send(checks, "Hello again")  # still usable: no × to find first
    checks.shows(page.locator("#chat-stats"), "tokens/s", timeout=JOB_TIMEOUT_MS)
    checks.shows(page.locator("#chat-bot"), "Hello again")


def test_stop_speaks_of_the_reply_and_max_new_tokens_follows_the_context(checks: BrowserChecks) -> None:
    page = checks.on("chat").page
    # The cap is read when a page opens, from the model's config once it is on disk: chat once
    # (which builds the tiny model if no test did), then open the page again.
    set_reply(checks, 4)
    send(checks, "Hello")
    checks.shows(page.locator("#chat-stats"), "tokens/s", timeout=JOB_TIMEOUT_MS)
    page.reload()
    page.locator("[role=tab]").first.wait_for(timeout=30_000)
    panel = checks.panel()
    if not panel.get_by_label("number input for Max new tokens").is_visible():
        checks.expand(panel, "Settings")
    field = panel.get_by_label("number input for Max new tokens")
    checks.check(lambda: expect(field).to_have_attribute("max", "1024", timeout=UI_TIMEOUT_MS))  # tiny model
    set_reply(checks, LONGEST_REPLY)
    stats = page.locator("#chat-stats")
    # The tiny model may finish a whole reply in a fifth of a second, before a click from Python
    # lands: Stop is clicked from inside the page at the reply's first text, and the reply is
    # tried again if it still ended first (about half the time on an idle machine; ten tries).
    for attempt in range(10):
        page.evaluate(STOP_MID_STREAM)
        send(checks, f"Tell me a long story, take {attempt + 1}")
        checks.check(page.wait_for_function, "() => window.__stopped === true", timeout=JOB_TIMEOUT_MS)
        checks.check(lambda: expect(stats).not_to_have_text(re.compile("Generating"), timeout=JOB_TIMEOUT_MS))
        if stats.inner_text().strip().startswith("Stopped."):
            break
        logger.info("reply %d ended before Stop landed; trying again", attempt + 1)
    checks.shows(stats, "Stopped.")
    toast = page.locator(".toast-body").filter(has_text="Stopping")
    checks.shows(toast, "Stopping the reply")
    checks.that("step" not in toast.first.inner_text(), f"the chat's Stop notice speaks of steps: {toast.first.inner_text()}")
