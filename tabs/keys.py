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
- **a job waiting behind others says how many, and about how long it will wait** ("1 job
  ahead, about 40 s"), where gradio 6.31 writes "queue: 1/1" (its place among the waiting
  jobs, while one more runs). The wait is the running job's time left plus the average job for
  each one waiting between, from ``GET /studio_api/queue_wait`` (``tabs/queue_wait.py``), asked
  about once a second while a visible status tracker waits, and not at all otherwise. Until
  something is known (no job has finished and the running one has not reported progress) it
  says only how many. gradio's own elapsed timer stays after the "|".

The route lies below gradio's root path, as gradio's own routes do: the script takes the path of
``gradio_config.root`` (the page's own where it is missing) on the page's origin, the way
gradio's client resolves its root, so the app works behind a proxy that serves it under a prefix.
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
  // "queue: 1/1 |" is gradio's; "1 job ahead, about 40 s |" is this script's own, matched again to
  // keep its time current (gradio writes a text node again only when its own value changes).
  const queued = /^(?:queue: (\d+)\/\d+|(\d+) jobs? ahead(?:, about [^|]*)?) \|/;
  const root = new URL((window.gradio_config && window.gradio_config.root) || location.href, location.href);
  const waitUrl = new URL(`${root.pathname.replace(/\/$/, '')}/studio_api/queue_wait`, location.origin);
  let wait = null, askedAt = 0, asking = false;
  const ask = () => {
    if (asking || Date.now() - askedAt < 1000) return;
    asking = true;
    askedAt = Date.now();
    fetch(waitUrl, {credentials: 'same-origin', cache: 'no-store'})
      .then((response) => (response.ok ? response.json() : null))
      .then((answer) => { wait = answer && {...answer, at: Date.now()}; })
      .catch(() => { wait = null; })
      .finally(() => { asking = false; });
  };
  const about = (ahead) => {
    // Nothing running that the Studio knows of (it is just starting): count it as an average job.
    const running = wait && (wait.running_left_s ?? wait.average_s);
    if (running == null || (ahead > 1 && wait.average_s == null)) return '';
    const seconds = Math.max(0, running - (Date.now() - wait.at) / 1000) + (ahead - 1) * (wait.average_s ?? 0);
    return seconds < 90 ? `, about ${Math.max(1, Math.round(seconds))} s` : `, about ${Math.round(seconds / 60)} min`;
  };
  setInterval(() => {
    const bars = [...document.querySelectorAll('[role="progressbar"][aria-valuenow]')].filter(shown);
    const done = bars.map((bar) => Number(bar.getAttribute('aria-valuenow'))).filter(Number.isFinite);
    document.title = done.length ? `${Math.round(Math.max(...done))}% · ${title}` : title;
    let waiting = false;
    for (const tracker of document.querySelectorAll('[data-testid="status-tracker"]')) {
      const walker = document.createTreeWalker(tracker, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const match = queued.exec(node.data);
        if (match) {
          const ahead = Number(match[1] ?? match[2]);
          const jobs = `${ahead} job${ahead === 1 ? '' : 's'} ahead`;
          const text = node.data.replace(match[0], `${jobs}${about(ahead)} |`);
          if (text !== node.data) node.data = text;
          waiting = waiting || shown(tracker);
        }
      }
    }
    if (waiting) ask();
    else wait = null;  // the next wait starts from a fresh answer, not this one's
  }, 250);
}
"""
