"""System tab: device, live VRAM and RAM, each component's placement and size, unload buttons.

With ``--cluster`` it shows the replicas instead of this process (which loads no model then):
one row per replica (node, pid, device, live memory, state, its models) and every replica's
components, and Unload acts on one replica or on every live one.

``/status`` and ``/unload`` are registered by ``register_api`` whether or not the tab is shown
(``--tabs`` may leave it out), because scripts rely on them.

The tab's Unload buttons are not GPU jobs: they run in their own queue group (the memory manager
already waits for a running job before it drops anything, so queueing behind every waiting GPU
job as well only made them slow), show no progress overlay over the panel (an unload takes about
a second; the overlay greyed out the whole panel meanwhile), and confirm what they freed.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import gradio as gr

from backends.runtime.errors import InputError, UnknownNameError
from backends.runtime.probe import format_bytes
from backends.runtime.studio import Studio
from tabs.common import GPU_QUEUE, on_page_load, standalone, user_errors

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0
#: The tab's unload events queue here, one at a time, beside (not behind) the GPU queue; gradio
#: drops ``gr.Info`` from unqueued events, so they must be queued to confirm what they freed.
UNLOAD_QUEUE = dict(concurrency_id="unload", concurrency_limit=1)
#: What the table shows for a placement when the compute device is the CPU. ``/status`` keeps
#: DESIGN.md's values (gpu/cpu/disk/offload), where ``gpu`` means "on the compute device"; on a
#: machine without CUDA that device is the CPU, and "gpu" in the table misled people.
CPU_DEVICE_PLACEMENTS = {"gpu": "cpu (device)", "cpu": "ram (evicted)"}
#: Model names are a few words (``cascade.text_encoder``); a longer one is refused before it is
#: looked up, so the error does not echo a megabyte back to the client.
MAX_NAME_CHARS = 200
#: The replica choice that unloads on every live replica (``--cluster``).
EVERY_REPLICA = "every replica"


def register_api(studio: Studio) -> None:
    """Add the ``/status`` and ``/unload`` endpoints (call inside a ``gr.Blocks``)."""

    def status() -> dict[str, Any]:
        """What this machine runs on and which models are loaded where; reads only, takes milliseconds.

        Returns:
            JSON: device (GPU name or "cpu"), vram_total and vram_free and ram_total and ram_free (bytes, live)
            preset, budget (bytes or null), dtypes by model family, and models: one entry per model component
            with name, placement (gpu, cpu, disk or offload), bytes and last_used (Unix time, null if never).
        """
        return user_errors("Status", studio.status)

    def unload(name: str) -> dict[str, Any]:
        """Free memory: move models off the GPU and out of RAM; the next job that needs them loads them again.

        Waits for a running job to finish first. Use it to make room for another program on the GPU.

        Args:
            name: a component from status's models (e.g. "cascade.prior"), a family ("cascade"), or "all".

        Returns:
            The status JSON after the unload (see the status tool).
        """
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
    if "replicas" in status:
        live = sum(r["state"] == "live" for r in status["replicas"])
        return (f"**Cluster:** {status['cluster']} · **Preset:** {status['preset']} · **Replicas:** {live} live of "
                f"{len(status['replicas'])} (each holds its own models; the table lists them by replica)")
    budget = f" (budget {format_bytes(status['budget'])})" if status.get("budget") else ""
    memory = "VRAM" if status["device"] != "cpu" else "Device memory (CPU)"
    dtypes = ", ".join(f"{family} {dtype}" for family, dtype in (status.get("dtypes") or {}).items())
    reason = f" ({status['dtype_reason']})" if status.get("dtype_reason") else ""
    return (f"**Device:** {status['device']} · **Preset:** {status['preset']}\n\n"
            f"**{memory}:** {format_bytes(status['vram_free'])} free of {format_bytes(status['vram_total'])}{budget} · "
            f"**RAM:** {format_bytes(status['ram_free'])} free of {format_bytes(status['ram_total'])}"
            + (f"\n\n**Dtypes:** {dtypes}{reason}" if dtypes else ""))


def shown_placement(placement: str, device: str) -> str:
    """The table's text for ``placement`` (a ``/status`` value) on ``device`` (``/status``'s ``device``)."""
    return CPU_DEVICE_PLACEMENTS.get(placement, placement) if device == "cpu" else placement


def _rows(status: dict[str, Any]) -> list[list[Any]]:
    """The components table: this process's, or with ``--cluster`` every replica's, named ``component @ replica``."""
    rows = []
    holders = status.get("replicas") or [{"name": None, "device": status["device"], "models": status["models"]}]
    for holder in holders:
        for model in holder["models"]:
            used = model["last_used"]
            when = dt.datetime.fromtimestamp(used).strftime("%H:%M:%S") if used else "never"
            name = model["name"] if holder["name"] is None else f"{model['name']} @ {holder['name']}"
            rows.append([name, shown_placement(model["placement"], holder["device"]), format_bytes(model["bytes"]),
                         when])
    return rows


def replica_rows(status: dict[str, Any]) -> list[list[Any]]:
    """The replicas table (``--cluster``): name, node, pid, device, state, memory, models in memory."""
    rows = []
    for r in status.get("replicas") or []:
        loaded = sorted({m["name"].split(".")[0] for m in r["models"] if m["placement"] != "disk"})
        rows.append([r["name"], r["node"], r["pid"], r["device"], r["state"],
                     f"{format_bytes(r['vram_free'])} free of {format_bytes(r['vram_total'])}",
                     ", ".join(loaded) or "none", len(r.get("jobs", []))])
    return rows


def unload_confirmation(name: str, before: dict[str, Any], after: dict[str, Any]) -> str:
    """What an unload of ``name`` freed: the components that were in memory before and are on disk after.

    Read off the two statuses rather than the manager, so it says what the user can check in the
    table; a component a job loaded while the unload waited for it is not counted as freed.
    """
    was = {m["name"]: m for m in before["models"] if m["placement"] != "disk"}
    freed = [m["name"] for m in after["models"] if m["placement"] == "disk" and m["name"] in was
             and (name == "all" or m["name"] == name or m["name"].startswith(name + "."))]
    if not freed:
        return "Nothing was loaded" if name == "all" else f"Nothing was loaded under {name}"
    size = format_bytes(sum(was[n]["bytes"] for n in freed))
    return f"Unloaded {', '.join(freed)} ({size} freed)"


def build(studio: Studio) -> dict[str, Any]:
    """Build the tab (call inside a ``gr.Blocks``); refreshes itself every few seconds."""
    summary = gr.Markdown(elem_id="system-summary")
    table = gr.Dataframe(headers=["component", "placement", "size", "last used"],
                         datatype=["str", "str", "str", "str"], interactive=False,
                         label="Loaded components", elem_id="system-components")
    clustered = studio.cluster is not None
    replicas = gr.Dataframe(headers=["replica", "node", "pid", "device", "state", "memory", "models", "jobs"],
                            interactive=False, label="Replicas (Ray Serve)", visible=clustered,
                            elem_id="system-replicas")
    with gr.Row():
        choice = gr.Dropdown(label="Component", choices=["all"], value="all", allow_custom_value=False)
        where = gr.Dropdown(label="Replica", choices=[EVERY_REPLICA], value=EVERY_REPLICA, visible=clustered,
                            allow_custom_value=False, elem_id="system-replica")
        unload_one = gr.Button("Unload", variant="secondary")
        unload_all = gr.Button("Unload all", variant="stop")
    with gr.Accordion("Model files", open=False):
        files = gr.Markdown(elem_id="system-files")
        download = gr.Button("Download models for this preset", variant="primary")
    timer = gr.Timer(REFRESH_SECONDS)

    def show(status: dict[str, Any]) -> tuple[Any, ...]:
        models = [m for holder in status.get("replicas") or [status] for m in holder["models"]]
        names = ["all", *sorted({m["name"].split(".")[0] for m in models}), *sorted({m["name"] for m in models})]
        ids = [EVERY_REPLICA, *(r["name"] for r in status.get("replicas") or [])]
        return (_summary(status), _rows(status), gr.Dropdown(choices=names), replica_rows(status),
                gr.Dropdown(choices=ids))

    def refresh() -> tuple[Any, ...]:
        return show(studio.status())

    outputs = [summary, table, choice, replicas, where]
    # Filled at each page load, so the tab shows the status before the first tick.
    on_page_load(refresh, outputs)
    on_page_load(lambda: _files_summary(studio), files)

    def do_unload(name: str | None, replica: str | None) -> tuple[Any, ...]:
        target = name or "all"
        chosen = None if replica in (None, EVERY_REPLICA) else replica
        before = studio.status()
        after = user_errors("Unload", lambda: studio.unload(target, chosen) if clustered else studio.unload(target))
        if clustered:
            message = f"Asked {chosen or 'every live replica'} to unload {target}; the table shows it in a moment"
        else:
            message = unload_confirmation(target, before, after)
        logger.info("System tab: %s", message)
        gr.Info(message)
        return show(after)

    # No progress overlay on either: the tick would flash it over the panel every 2 s, and an
    # unload takes about a second; the unload's toast says when it is done.
    timer.tick(refresh, None, outputs, api_visibility="private", queue=False, show_progress="hidden")
    unload_one.click(do_unload, [choice, where], outputs, api_visibility="private", show_progress="hidden",
                     **UNLOAD_QUEUE)
    unload_all.click(lambda replica: do_unload("all", replica), where, outputs, api_visibility="private",
                     show_progress="hidden", **UNLOAD_QUEUE)

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
