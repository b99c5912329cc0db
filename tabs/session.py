"""What a page keeps across a reload: the tab it was on and what was typed or set in it.

A reload used to bring back every default and the first tab, so a half-written prompt and the
settings around it were lost. Gradio's ``gr.BrowserState`` keeps a value in the browser's local
storage; here one holds the open tab and one the visible inputs of every tab, keyed by tab and
label (stable across restarts, unlike component ids), and a load event puts them back.

Only what a user sets is kept: visible text boxes, numbers, sliders, checkboxes, dropdowns and
radios. Files, results and the hidden inputs of the API endpoints are left alone.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

import gradio as gr

logger = logging.getLogger(__name__)

#: Local-storage keys; a new app version with other widgets simply finds fewer matches.
TAB_KEY = "cascade-studio-tab"
INPUTS_KEY = "cascade-studio-inputs"
KEPT = (gr.Textbox, gr.Number, gr.Slider, gr.Checkbox, gr.Dropdown, gr.Radio)


def _inputs_of(tab: gr.Tab) -> dict[str, Any]:
    """The tab's visible, interactive inputs that carry a label, by label (the first of a label wins)."""
    found: dict[str, Any] = {}

    def walk(block: Any, hidden: bool) -> None:
        hidden = hidden or getattr(block, "visible", True) is False
        if isinstance(block, KEPT) and not hidden and block.interactive is not False and block.label:
            found.setdefault(str(block.label), block)
        for child in getattr(block, "children", []) or []:
            walk(child, hidden)

    walk(tab, False)
    return found


def remember(blocks: gr.Blocks, tab_set: gr.Tabs, tabs: Mapping[str, gr.Tab]) -> None:
    """Keep the open tab and each tab's inputs in the browser, and restore them when a page opens.

    Call inside ``blocks`` after every tab is built. ``tabs`` maps each tab's id to its ``gr.Tab``.
    """
    open_tab = gr.BrowserState(None, storage_key=TAB_KEY)
    kept = gr.BrowserState({}, storage_key=INPUTS_KEY)
    components: dict[str, Any] = {}
    # Inputs are saved in the page only (``js`` and no Python function): a keystroke costs no request.
    for name, tab in tabs.items():
        tab.select(lambda name=name: name, None, open_tab, api_visibility="private", queue=False,
                   show_progress="hidden")
        for label, component in _inputs_of(tab).items():
            components[f"{name}/{label}"] = component
    keys = list(components)
    for key, component in components.items():
        # change, not input: a value the tab sets itself (a size from the aspect ratio) is kept too.
        save = f"(value, saved) => ({{...(saved || {{}}), {json.dumps(key)}: value}})"
        component.change(None, [component, kept], kept, js=save, api_visibility="private", queue=False,
                         show_progress="hidden")

    def restore(tab: str | None, saved: dict[str, Any] | None) -> list[Any]:
        saved = saved if isinstance(saved, dict) else {}
        values = [saved[key] if key in saved else gr.skip() for key in keys]
        selected = gr.Tabs(selected=tab) if isinstance(tab, str) and tab in tabs else gr.skip()
        return [selected, *values]

    blocks.load(restore, [open_tab, kept], [tab_set, *components.values()], api_visibility="private",
                queue=False, show_progress="hidden")
    logger.info("pages keep their tab and %d inputs across reloads", len(keys))
