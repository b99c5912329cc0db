"""Keyboard habits users bring from AUTOMATIC1111 and the chat apps, for every tab at once.

- **Ctrl+Enter** (Cmd+Enter on a Mac) in a tab's prompt box, or any other field of the tab, runs
  that tab's main action: the visible button whose ``elem_id`` ends in ``-generate`` (in the
  Variation tab, the one of the open sub-tab), or the chat's Send.
- **Esc** stops the running job of this page: it clicks the visible tab's button whose
  ``elem_id`` ends in ``-stop``, the same button the user would press (its notice, its cancel).

Gradio has no key bindings of its own beyond Enter in a one-line box, so this is one small script
given to ``launch(js=...)``. It finds buttons by the ``elem_id`` convention the tabs follow, so a
new tab gets the shortcuts by naming its buttons ``<tab>-generate`` and ``<tab>-stop``.
"""

from __future__ import annotations

#: Runs once when the page loads (gradio calls it as a function).
SHORTCUTS_JS = """
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
}
"""
