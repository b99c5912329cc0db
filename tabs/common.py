"""Helpers every tab shares: error translation at the UI boundary, progress adaptation, and the
wiring of public endpoints that take an uploaded picture.

Gradio shows API clients the message of ``gr.Error`` only, so every handler runs its work through
``user_errors``: our own ``StudioError`` keeps its message; anything else is logged with its
traceback and reported with its type, so the user has something to search for.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import gradio as gr
from gradio.utils import get_upload_folder

from backends.runtime import zerogpu
from backends.runtime.errors import Cancelled, InputError, StudioError
from backends.runtime.outputs import atomic_write
from backends.runtime.progress import ProgressFn

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: GPU events share one queue slot so two jobs never fight over device memory (DESIGN.md);
#: ``widen_gpu_queue`` gives it one slot per replica with ``--cluster``.
GPU_QUEUE = dict(concurrency_id="gpu", concurrency_limit=1)
#: The ``meta`` gradio puts on a file object in a JSON payload (``gradio_client.handle_file``).
FILE_DATA = {"_type": "gradio.FileData"}


class Stopped(Exception):
    """The user pressed Stop (or the page went away) and the job ended at a step boundary, saving nothing.

    Not a failure: Stop's own notice has said so, and the handler ends quietly (a generator
    returns, a plain handler returns ``gr.skip()`` for its outputs), so no red toast or "Error"
    pill appears and the previous result stays where it was. The handler adds no notice of its
    own: Stop cancels its event, so whether it would still reach the page is a race.
    """


#: The on-screen label of each API field, so that a refusal names the field as the user sees it
#: and as a script sends it: "Stage C steps (prior_steps): must be between 1 and 100, got 1000".
#: Fields a tab labels its own way share the most general wording ("Input picture").
FIELD_LABELS: dict[str, str] = {
    "prompt": "Prompt", "negative_prompt": "Negative prompt", "width": "Width", "height": "Height",
    "prior_steps": "Stage C steps", "decoder_steps": "Stage B steps", "prior_guidance": "Stage C guidance",
    "decoder_guidance": "Stage B guidance", "num_images": "Images", "seed": "Seed", "image": "Input picture",
    "strength": "Strength", "num_frames": "Frames", "fps": "FPS", "motion_bucket_id": "Motion",
    "noise_aug_strength": "Noise augmentation", "steps": "Steps", "decode_chunk_size": "Decode chunk",
    "fit": "Fit to the model size", "variant": "Variant", "elevation_deg": "Elevation (degrees)", "path": "Path",
    "elevation_end_deg": "Elevation opposite the input view", "message": "Message", "history": "Chat history",
    "system_prompt": "System prompt", "temperature": "Temperature", "top_p": "Top-p",
    "max_new_tokens": "Max new tokens", "top_k": "Top-k", "repetition_penalty": "Repetition penalty",
    "name": "Component", "guidance": "Guidance", "model": "Model", "mask": "Mask",
    "max_sequence_length": "T5 sequence length", "t5": "T5 encoder", "refiner": "Refiner",
    "high_noise_frac": "Refiner switch point", "options": "Model options", "seconds": "Length (seconds)",
}


def labelled(error: InputError) -> str:
    """The refusal with the field's on-screen label before its API name (``history[2]`` -> "Chat history")."""
    label = FIELD_LABELS.get(error.field.split("[", 1)[0])
    return str(error) if label is None else f"{label} ({error.field}): {error.detail}"


def user_errors(what: str, work: Callable[[], T]) -> T:
    """Run ``work``; turn every failure into a ``gr.Error`` whose message reaches API clients.

    Raises:
        Stopped: the user pressed Stop; the caller ends quietly.
        gr.Error: any failure, with the user-facing message.
    """
    try:
        return work()
    except gr.Error:
        raise
    except Cancelled as error:
        logger.info("%s stopped: %s", what, error)
        raise Stopped(str(error)) from error
    except InputError as error:
        logger.info("%s refused: %s", what, error)
        raise gr.Error(labelled(error)) from error
    except StudioError as error:
        logger.info("%s failed: %s", what, error)
        raise gr.Error(str(error)) from error
    except Exception as error:  # the last line of defence: keep serving and say what happened
        logger.exception("%s failed unexpectedly", what)
        raise gr.Error(f"{what} failed: {type(error).__name__}: {error}. The console log has the "
                       "details; the app is still running.") from error


def gradio_progress(progress: gr.Progress, plan: Sequence[int] = (), *,
                    on_fraction: Callable[[float], None] | None = None) -> ProgressFn:
    """Adapt a backend ``ProgressFn`` call to Gradio's progress bar: one bar for the whole job.

    Args:
        plan: the steps each stage of the job will take, in the order the stages run (Stage C,
            Stage B, Stage A): the bar then spans all of them, with an estimate of the time
            left. A stage's own report of its total replaces the planned one (img2img runs fewer
            stage C steps than asked). The estimate counts every step alike; it settles as the
            job goes. Without a plan, each stage fills the bar on its own.
        on_fraction: told the fraction of the job done at each report (the job's
            ``JobControl.progressed``), so that a job waiting behind this one can be told how
            long it will wait. Without a plan, the fraction is that of the current stage.
    """
    seen: list[str] = []
    totals = list(plan)
    started = time.monotonic()

    def report(stage: str, step: int, total: int) -> None:
        if stage not in seen:
            seen.append(stage)
        index = seen.index(stage)
        if not plan:
            if on_fraction is not None:
                on_fraction(min(1.0, step / max(1, total)))
            progress((step, total), desc=f"{stage}: step {step}/{total}", unit="steps")
            return
        totals.extend([0] * (index + 1 - len(totals)))  # a stage the plan did not know of
        totals[index] = total
        fraction = min(1.0, (sum(totals[:index]) + step) / max(1, sum(totals)))
        if on_fraction is not None:
            on_fraction(fraction)
        elapsed = time.monotonic() - started
        left = elapsed * (1 - fraction) / fraction if fraction > 0 else 0.0
        eta = f" · about {_duration(left)} left" if 0 < fraction < 1 and elapsed >= ETA_AFTER_S else ""
        progress(fraction, desc=f"{stage}: step {step}/{total} · {fraction:.0%} of the job{eta}")

    return report


#: The first second's rate says little (a model may still be moving in): no estimate before it.
ETA_AFTER_S = 1.0


def _duration(seconds: float) -> str:
    """A rough time for the progress line: "8 s", "2 min"."""
    return f"{max(1, round(seconds))} s" if seconds < 90 else f"{round(seconds / 60)} min"


def session_of(request: gr.Request | None) -> str:
    """A key for this browser session (API clients get one per connection)."""
    return (request.session_hash if request is not None else None) or "anonymous"


def standalone(build: Callable[[Any], None], studio: Any, title: str) -> gr.Blocks:
    """One tab in its own Blocks, for a quick look while working on it."""
    with gr.Blocks(title=title) as blocks:
        build(studio)
    return blocks


def on_gpu(handler: Callable[..., T], seconds: Callable[..., int]) -> Callable[..., T]:
    """Wrap a GPU event handler with ``spaces.GPU`` on ZeroGPU; elsewhere return it unchanged.

    ``seconds`` is called with the handler's own arguments (the Spaces docs' dynamic duration) and
    estimates how long the call holds the GPU: ZeroGPU gives shorter requests a better place in
    its queue and cuts a call off at its duration, so the estimate covers the process's start
    (it receives every preloaded model) plus the steps asked for. Every handler asks for the
    same ``zerogpu.SPACE_SIZE``, which says why. ``spaces`` is imported only on ZeroGPU.
    """
    if not zerogpu.enabled():
        return handler
    spaces = zerogpu.import_spaces()
    return spaces.GPU(duration=seconds, size=zerogpu.SPACE_SIZE.value)(handler)


def on_page_load(fn: Callable[[], Any], outputs: Any) -> None:
    """Fill ``outputs`` from ``fn`` each time a page opens, without making it an API endpoint.

    A callable component value would do the same, but gradio 6.31 publishes each one as a public
    ``/lambda_N`` endpoint; a private load event on the Blocks being built does not.
    """
    from gradio.context import Context

    root = Context.root_block
    if root is None:
        raise RuntimeError("on_page_load must be called while a gr.Blocks is being built")
    root.load(fn, None, outputs, api_visibility="private", queue=False, show_progress="hidden")


def end_jobs_with_the_page(studio: Any, blocks: gr.Blocks) -> None:
    """A page that closes or reloads stops its running job at the next step; nothing is saved.

    gradio runs ``unload`` events when a page's heartbeat connection drops. Without this the job
    ran on to its end, saved a result nobody would see, and the next job waited behind it.
    """

    def on_unload(request: gr.Request) -> None:
        if studio.stop_job(session_of(request)):
            logger.info("a page closed during its job: stopping it at the next step")

    blocks.unload(on_unload)


#: Stop's notice where a job is one result (a video, an orbit): stopped, it leaves nothing.
STOP_NOTICE = "Stopping after the current step; nothing will be saved."
#: Stop's notice where a job makes its images one after another (``wire_stop(keep_finished=True)``).
STOP_KEEPS_NOTICE = "Stopping after the current step; only images already finished are saved."


def wire_stop(studio: Any, stop: gr.Button, events: list[Any], notice: str | None = None, *,
              keep_finished: bool = False) -> Any:
    """Stop sets this session's Stop flag (the job ends at its next step) and cancels ``events``.

    Args:
        notice: what the user reads when a job was running (chat stops between tokens, not
            steps); by default ``STOP_KEEPS_NOTICE`` or ``STOP_NOTICE``, as ``keep_finished`` says.
        keep_finished: the events' jobs end themselves with what they finished (the images of a
            batch made before Stop, as AUTOMATIC1111's Interrupt keeps them), so Stop does not
            cancel them: a cancelled event could no longer show or save those images.

    Returns:
        The Stop event, for a tab to chain what it shows once the job was cancelled.
    """

    said = notice or (STOP_KEEPS_NOTICE if keep_finished else STOP_NOTICE)

    def on_stop(request: gr.Request) -> None:
        if studio.stop_job(session_of(request)):
            gr.Info(said)

    # Queued, but in its own unlimited group: gradio drops gr.Info from events outside the queue,
    # and Stop must never wait behind the GPU job it stops.
    return stop.click(on_stop, None, None, cancels=None if keep_finished else events,
                      api_visibility="private", concurrency_limit=None)


# ----- API endpoints that take a picture ----------------------------------------------------------
#
# A tab's picture input is a ``gr.File``, but its public endpoint reads the picture from a hidden
# ``gr.JSON`` instead: gradio 6.31 validates a ``gr.File`` payload with pydantic before any handler
# runs, so a plain path string, a number or a stray dict from an API client failed with gradio's
# hidden "has not enabled verbose error reporting" message, and a file of another type with
# "Invalid file type", which names no field. gradio still checks every file object in any input's
# payload (it must be an upload) and moves it to its cache, so ``uploaded_path`` only has to turn
# what is left into a path or an error naming the field. The tab's own button keeps the
# ``gr.File`` and a private event; a hidden button carries the public one.


def api_file_input(field: str) -> gr.JSON:
    """The hidden input a public endpoint reads an uploaded file from (see ``uploaded_path``)."""
    return gr.JSON(value=None, label=field, visible=False)


def api_endpoint(handler: Callable[..., Any], seconds: Callable[..., int], inputs: list[Any],
                 outputs: list[Any], api_name: str) -> Any:
    """Wire ``handler`` as the public ``api_name`` on a hidden button, on the GPU queue.

    ``preprocess=False`` hands the handler the values as the client sent them: gradio's
    ``gr.Textbox`` would otherwise turn a list or a number into its ``str()``, which our
    validation could no longer tell from text the user typed.
    """
    trigger = gr.Button(api_name, visible=False)
    return trigger.click(on_gpu(handler, seconds), inputs, outputs, api_name=api_name, preprocess=False,
                         **GPU_QUEUE)


def uploaded_path(field: str, value: Any) -> str | None:
    """The local path of the file an API client uploaded for ``field``; None when none was given.

    Raises:
        InputError: anything but an uploaded file (``gradio_client.handle_file("photo.png")``).
    """
    if value is None or value == "" or value == {}:
        return None
    how = "with gradio_client, pass handle_file('photo.png')"
    if isinstance(value, str):
        raise InputError(field, f"expected an uploaded file, got the text {value[:80]!r}; {how}")
    if not isinstance(value, dict):
        raise InputError(field, f"expected an uploaded file, got {type(value).__name__}; {how}")
    path = value.get("path")
    if value.get("meta") != FILE_DATA or not isinstance(path, str):
        keys = ", ".join(sorted(map(str, value)))[:80]
        raise InputError(field, f"expected an uploaded file, got an object with keys {keys or 'none'}; {how}")
    # gradio has refused server paths outside its upload folder and cached the rest (a URL through
    # its SSRF-guarded download); checked again so that no other path ever reaches the backends.
    if not Path(path).resolve().is_relative_to(Path(get_upload_folder()).resolve()):
        raise InputError(field, f"{Path(path).name or path[:80]} was not uploaded to this app; {how}")
    return path


def widen_gpu_queue(demo: gr.Blocks, slots: int) -> None:
    """Let ``slots`` GPU events run at once (``--cluster``: one per replica, each on its own device).

    The events are wired with ``GPU_QUEUE`` while the tabs are built, before the replicas are
    counted; gradio 6.31 reads each event's ``concurrency_limit`` when the queue starts, so
    setting it on the built events (``Blocks.fns``) before ``launch`` is enough.
    """
    if slots == 1:
        return
    for fn in demo.fns.values():
        if fn.concurrency_id == GPU_QUEUE["concurrency_id"]:
            fn.concurrency_limit = slots


def picture_file(picture: Any) -> str | None:
    """``picture`` (a PIL image, or None) as a WebP in gradio's upload folder, for an output.

    Handed a PIL image, gradio 6.31 writes it at a path named by its content with a plain
    ``write_bytes``, every time. The same picture shown twice in a row (a preview that runs
    twice) then truncates the file while the browser is still fetching the first copy: the
    browser gets a broken image and the server logs "Response content longer than
    Content-Length" (seen once in CI, the Variation tab's preview). This writes the file once,
    atomically (``outputs.atomic_write``), and gradio copies a path it is handed
    the same careful way (``processing_utils.save_file_to_cache``).
    """
    if picture is None:
        return None
    encoded = io.BytesIO()
    picture.save(encoded, format="WEBP")  # what gradio's own Image output would have sent
    data = encoded.getvalue()
    folder = Path(get_upload_folder()) / "previews"
    target = folder / f"{hashlib.sha256(data).hexdigest()[:40]}.webp"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda staging: staging.write_bytes(data), folder)
    return str(target)
