"""System tab: device, live VRAM and RAM, each component's placement and size, unload buttons.

``/status`` and ``/unload`` are registered by ``register_api`` whether or not the tab is shown
(``--tabs`` may leave it out), because scripts rely on them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import gradio as gr

from backends.runtime.errors import InputError, UnknownNameError
from backends.runtime.probe import format_bytes
from backends.runtime.studio import Studio
from tabs.common import GPU_QUEUE, on_page_load, standalone, user_errors

REFRESH_SECONDS = 2.0
#: Model names are a few words (``cascade.text_encoder``); a longer one is refused before it is
#: looked up, so the error does not echo a megabyte back to the client.
MAX_NAME_CHARS = 200


def register_api(studio: Studio) -> None:
    """Add the ``/status`` and ``/unload`` endpoints (call inside a ``gr.Blocks``)."""

    def status() -> dict:
        """Device, live memory (budget applied), preset and every component's placement."""
        return user_errors("Status", studio.status)

    def unload(name: str) -> dict:
        """Drop a component (``cascade.prior``), a backend (``cascade``) or ``all`` from memory."""
        return user_errors("Unload", lambda: unload_named(studio, name))

    gr.api(status, api_name="status", concurrency_limit=None)
    gr.api(unload, api_name="unload", **GPU_QUEUE)


def unload_named(studio: Studio, name: Any) -> dict[str, Any]:
    """``/unload``: drop ``name`` and return the status; every refusal is an ``InputError`` naming ``name``.

    The lookup is ``studio.unload``'s; its unknown-name error (which lists the known names) gets
    the field's name here, like the type and length checks before it.
    """
    hint = "give a model name from /status, a backend name or 'all'"
    if not isinstance(name, str):
        raise InputError("name", f"expected text, got {type(name).__name__}; {hint}")
    if not name.strip():
        raise InputError("name", f"is empty; {hint}")
    if len(name) > MAX_NAME_CHARS:
        raise InputError("name", f"is {len(name):,} characters; {hint}")
    try:
        return studio.unload(name)
    except UnknownNameError as error:
        raise InputError("name", str(error)) from error


def _summary(status: dict[str, Any]) -> str:
    budget = f" (budget {format_bytes(status['budget'])})" if status.get("budget") else ""
    return (f"**Device:** {status['device']} · **Preset:** {status['preset']}\n\n"
            f"**{'VRAM' if status['device'] != 'cpu' else 'Device memory (CPU)'}:** {format_bytes(status['vram_free'])} free of {format_bytes(status['vram_total'])}{budget} · "
            f"**RAM:** {format_bytes(status['ram_free'])} free of {format_bytes(status['ram_total'])}")


def _rows(status: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for model in status["models"]:
        used = model["last_used"]
        when = dt.datetime.fromtimestamp(used).strftime("%H:%M:%S") if used else "never"
        rows.append([model["name"], model["placement"], format_bytes(model["bytes"]), when])
    return rows


def build(studio: Studio) -> dict[str, Any]:
    """Build the tab (call inside a ``gr.Blocks``); refreshes itself every few seconds."""
    summary = gr.Markdown(elem_id="system-summary")
    table = gr.Dataframe(headers=["component", "placement", "size", "last used"],
                         datatype=["str", "str", "str", "str"], interactive=False,
                         label="Loaded components", elem_id="system-components")
    with gr.Row():
        choice = gr.Dropdown(label="Component", choices=["all"], value="all", allow_custom_value=False)
        unload_one = gr.Button("Unload", variant="secondary")
        unload_all = gr.Button("Unload all", variant="stop")
    with gr.Accordion("Model files", open=False):
        files = gr.Markdown(elem_id="system-files")
        download = gr.Button("Download models for this preset", variant="primary")
    timer = gr.Timer(REFRESH_SECONDS)

    def refresh() -> tuple[str, list[list[Any]], Any]:
        status = studio.status()
        names = ["all", *sorted({m["name"].split(".")[0] for m in status["models"]}),
                 *[m["name"] for m in status["models"]]]
        return _summary(status), _rows(status), gr.Dropdown(choices=names)

    # Filled at each page load, so the tab shows the status before the first tick.
    on_page_load(refresh, [summary, table, choice])
    on_page_load(lambda: _files_summary(studio), files)

    def do_unload(name: str) -> tuple[str, list[list[Any]], Any]:
        user_errors("Unload", lambda: studio.unload(name or "all"))
        return refresh()

    outputs = [summary, table, choice]
    timer.tick(refresh, None, outputs, api_visibility="private", queue=False)
    unload_one.click(do_unload, choice, outputs, api_visibility="private", **GPU_QUEUE)
    unload_all.click(lambda: do_unload("all"), None, outputs, api_visibility="private", **GPU_QUEUE)

    def do_download(progress: gr.Progress = gr.Progress()) -> str:
        def report(label: str, done: int, total: int) -> None:
            progress((done, total), desc=f"Downloading {label}", unit="bytes")

        fetched = user_errors("Download", lambda: studio.download_all(report))
        gr.Info(f"Downloaded {format_bytes(fetched)}." if fetched else "Every file was already here.")
        return _files_summary(studio)

    download.click(do_download, None, files, api_visibility="private", concurrency_id="download",
                   concurrency_limit=1)
    return {}


def _files_summary(studio: Studio) -> str:
    missing = studio.missing_files()
    if not missing:
        return f"All files of preset **{studio.preset.name}** are in the cache."
    lines = "\n".join(f"- {line}" for line in missing)
    return (f"Preset **{studio.preset.name}** still needs files from the hub (fetched on first use, "
            f"or now with the button, or `python app.py --download-only --preset {studio.preset.name}`):\n"
            f"{lines}")


def demo(studio: Studio) -> gr.Blocks:
    """This tab alone, for a quick look: ``demo(studio).launch()``."""
    return standalone(build, studio, "Cascade Studio: System")
