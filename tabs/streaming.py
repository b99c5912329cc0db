"""Image jobs from a tab, with optional live previews streamed into the result gallery.

Shared by the Image and Variation tabs (a helper like ``tabs.common``, not a tab). A handler is a
generator: with previews off it runs the job and yields the result once, exactly as a plain
handler would (the API endpoints always run this way: their previews switch is a ``gr.State``,
which is not an API input, and defaults to off). With previews on, the job runs on a worker
thread and its previews reach the gallery as they arrive; the final images replace them.

Previews cross threads through a queue, so the backend never sees Gradio: it calls a plain
``PreviewFn`` (``backends.runtime.previews``). The worker runs in a copy of the handler's context, which
is where Gradio keeps the event that ``gr.Progress`` reports to.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import gradio as gr
from PIL import Image

from backends.runtime.previews import WithPreviews
from backends.runtime.studio import Studio
from tabs.common import Stopped, gradio_progress, session_of, user_errors

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preview:
    """One preview report from the worker: a small picture per image of the batch."""

    images: list[Image.Image]
    step: int
    total: int


class _Finished:
    """Queue sentinel: the worker is done (its outcome is in ``_Outcome``)."""


@dataclass
class _Outcome:
    result: Any = None
    error: Exception | None = None


def job_plan(request: Any) -> tuple[int, ...]:
    """The steps of each stage of an image job, in the order they run: one bar over the whole job.

    Stable Cascade runs stages C, B and A for each image in turn; an SD model denoises each image
    (its stages' own reports replace the planned totals: img2img runs ``strength`` of the steps,
    the SDXL refiner takes over the last ones).
    """
    if hasattr(request, "prior_steps"):
        return (request.prior_steps, request.decoder_steps, 1) * request.num_images
    return (request.steps,) * request.num_images


def run_job(studio: Studio, session: str, task: str, request: Any, progress: gr.Progress, *,
            previews: bool, every: int, what: str) -> Iterator[Preview | Any]:
    """Run ``task`` through the registry; yield ``Preview`` items (when asked), then the result.

    Stop works as for any job (the session's Stop flag is checked at every step). If the consumer
    goes away early (the event was cancelled), the job is told to stop at its next step.

    Raises:
        gr.Error: the job failed; the message is the user-facing one (``user_errors``).
        Stopped: the user pressed Stop (``user_errors`` said so already).
    """
    control = studio.start_job(session)
    plan = job_plan(request)
    report = control.wrap(gradio_progress(progress, plan, on_fraction=control.progressed))
    worker: threading.Thread | None = None
    try:
        if not previews:
            yield user_errors(what, lambda: studio.registry.run(task, request, report))
            return
        events: queue.Queue[Preview | _Finished] = queue.Queue()
        outcome = _Outcome()

        def on_preview(images: list[Image.Image], step: int, total: int) -> None:
            events.put(Preview(images, step, total))

        def work() -> None:
            try:
                outcome.result = studio.registry.run(task, request, WithPreviews(report, on_preview, every))
            except Exception as error:  # handed to the handler thread, which raises it
                outcome.error = error
            finally:
                events.put(_Finished())

        context = contextvars.copy_context()
        worker = threading.Thread(target=context.run, args=(work,), name=f"{task}-{session[:8]}", daemon=True)
        worker.start()
        while not isinstance(item := events.get(), _Finished):
            yield item
        worker.join()
        if outcome.error is not None:
            error = outcome.error
            user_errors(what, lambda: _raise(error))
        yield outcome.result
    finally:
        if worker is not None and worker.is_alive():
            logger.info("%s: the client left; stopping the job at its next step", what)
            control.cancel()
        studio.finish_job(session, control)


def _raise(error: Exception) -> Any:
    raise error


def image_job(studio: Studio, task: str, build: Callable[[], Any], previews: Any, request: gr.Request | None,
              progress: gr.Progress, *, what: str) -> Iterator[tuple[Any, Any]]:
    """A whole image handler: validate, run (streaming previews), save atomically, yield gallery + info.

    Args:
        build: validates the raw inputs into a request (raises ``InputError`` naming the field).
        previews: the tab's previews switch (a ``gr.State``; off for API calls).
    """
    session = session_of(request)
    job = user_errors(what, build)
    every = studio.preset.settings.cascade.defaults.preview_every
    result = None
    try:
        for item in run_job(studio, session, task, job, progress, previews=bool(previews), every=every,
                            what=what):
            if isinstance(item, Preview):
                yield [(image, f"{PREVIEW_CAPTION}{item.step}/{item.total}") for image in item.images], gr.skip()
            else:
                result = item
    except Stopped:
        return  # nothing finished, nothing to save; ``wire_result_restore`` puts the previous result back
    info = {**result.info, "seed": job.seed, "preset": studio.preset.name}
    # Each file carries its own image's seed, so PNG Info or a reused seed makes that picture again.
    own = [{"seed": seed, "num_images": 1, "batch_seed": job.seed} for seed in info.get("seeds", [])]
    paths = user_errors(what, lambda: studio.outputs.save_images(result.images, {**job.as_dict(), **info},
                                                                 per_image=own or None))
    info["files"] = [str(p) for p in paths]
    if len(paths) < job.num_images:
        kept = "the finished one is" if len(paths) == 1 else f"the {len(paths)} finished are"
        gr.Info(f"Stopped after {len(paths)} of {job.num_images} images; {kept} kept and saved.")
    yield result_gallery(info), info


#: Captions of live previews; a gallery showing one holds no result.
PREVIEW_CAPTION = "preview: stage C step "


def result_gallery(info: dict[str, Any] | None) -> list[tuple[str, str]] | None:
    """The gallery items of a finished job from its info (saved files, seed), as the job showed them."""
    files = (info or {}).get("files")
    if not isinstance(files, list):
        return None
    seeds = info.get("seeds") or [info.get("seed")] * len(files)
    return [(str(path), f"seed {seed} #{i + 1}") for i, (path, seed) in enumerate(zip(files, seeds))]



def wire_selection(events: list[Any], gallery: gr.Gallery, info: gr.JSON) -> gr.State:
    """A State with the path of the result picture the user picked: the first after each run, then
    the one clicked in the gallery. What "Send to …" sends (``app.py``)."""
    selected = gr.State(value=None)
    for event in events:
        event.then(lambda data: ((data or {}).get("files") or [None])[0], info, selected,
                   api_visibility="private", queue=False)

    def on_select(data: dict | None, evt: gr.SelectData) -> str | None:
        files = (data or {}).get("files") or []
        return files[evt.index] if isinstance(evt.index, int) and evt.index < len(files) else None

    gallery.select(on_select, info, selected, api_visibility="private", queue=False)
    return selected


def wire_result_restore(events: list[Any], gallery: gr.Gallery, info: gr.JSON) -> None:
    """Keep each finished result, and put it back when a stopped job leaves live previews showing.

    A job stopped before its first image saves nothing and ends without a result, so with
    previews on the gallery would go on showing the last preview as if it were the result. The
    last result lives in a State (never an API input) and comes back once the job has ended; a
    job that ended with images (all of them, or those finished before Stop) shows no preview.
    """
    kept = gr.State(None)

    def restore(shown: list[Any] | None, previous: list[Any] | None) -> Any:
        previewing = any(str(caption or "").startswith(PREVIEW_CAPTION) for _, caption in shown or [])
        return (previous or []) if previewing else gr.skip()

    for event in events:
        event.then(restore, [gallery, kept], gallery, api_visibility="private", queue=False).then(
            result_gallery, info, kept, api_visibility="private", queue=False)
