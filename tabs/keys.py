"""Keyboard habits users bring from AUTOMATIC1111 and the chat apps, for every tab at once.

- **Ctrl+Enter** (Cmd+Enter on a Mac) in a tab's prompt box, or any other field of the tab, runs
  that tab's main action: the visible button whose ``elem_id`` ends in ``-generate`` (in the
  Variation tab, the one of the open sub-tab), or the chat's Send.
- **Esc** stops the running job of this page: it clicks the visible tab's button whose
  ``elem_id`` ends in ``-stop``, the same button the user would press (its notice, its cancel).

Gradio has no key bindings of its own beyond Enter in a one-line box, so this is one small script
given to ``launch(js=...)``. It finds buttons by the ``elem_id`` convention the tabs follow, so a
new tab gets the shortcuts by naming its buttons ``<tab>-generate`` and ``<tab>-stop``.

The same script keeps two more habits of the anchors' pages:

- **the browser tab's title shows the running job's percentage** ("42% · Cascade Studio"), read
  from gradio's progress bar (``role="progressbar"``, ``aria-valuenow``);
- **a job waiting behind others says how many** ("1 job ahead"), where gradio 6.31 writes
  "queue: 1/1" (its position among the waiting jobs, while one more is running); gradio's own
  timer with the expected wait stays beside it.
"""

from __future__ import annotations

#: Runs once when the page loads (gradio calls it as a function).
SHORTCUTS_JS = r"""
() => {
  const shown = (el) => el !== null && el.offsetParent !== null && !el.disabled;
  const mainAction = (panel) => [...panel.querySelectorAll('[id$="-generate"], #chat-send')].find(shown);
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey) && !event.altKey) {
      if (!event.target.closest || !event.target.closest('textarea, input')) return;
      // The innermost panel first: a field inside a sub-tab runs that sub-tab's button; a prompt
      // above the sub-tabs (Variation) runs the button of the sub-tab that is open.
      for (let panel = event.target.closest('[role="tabpanel"]'); panel;
           panel = panel.parentElement && panel.parentElement.closest('[role="tabpanel"]')) {
        const button = mainAction(panel);
        if (button) {
          event.preventDefault();
          event.stopPropagation();
          button.click();
          return;
        }
      }
    } else if (event.key === 'Escape' && !event.ctrlKey && !event.metaKey && !event.altKey) {
      const stop = [...document.querySelectorAll('[id$="-stop"]')].find(shown);
      if (stop) stop.click();
    }
  }, true);

  const title = document.title;
  setInterval(() => {
    const bars = [...document.querySelectorAll('[role="progressbar"][aria-valuenow]')].filter(shown);
    const done = bars.map((bar) => Number(bar.getAttribute('aria-valuenow'))).filter(Number.isFinite);
    document.title = done.length ? `${Math.round(Math.max(...done))}% · ${title}` : title;
    for (const tracker of document.querySelectorAll('[data-testid="status-tracker"]')) {
      const walker = document.createTreeWalker(tracker, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const queued = /^queue: (\d+)\/\d+ \|/.exec(node.data);
        if (queued) {
          const ahead = Number(queued[1]);
          node.data = node.data.replace(queued[0], `${ahead} job${ahead === 1 ? '' : 's'} ahead |`);
        }
      }
    }
  }, 250);
}
"""
