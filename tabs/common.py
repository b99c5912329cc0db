"""Helpers every tab shares: error translation at the UI boundary and progress adaptation.

Gradio shows API clients the message of ``gr.Error`` only, so every handler runs its work through
``user_errors``: our own ``StudioError`` keeps its message; anything else is logged with its
traceback and reported with its type, so the user has something to search for.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, TypeVar

import gradio as gr

from backends.errors import Cancelled, StudioError
from backends.progress import ProgressFn

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: GPU events share one queue slot so two jobs never fight over device memory (DESIGN.md).
GPU_QUEUE = dict(concurrency_id="gpu", concurrency_limit=1)


def user_errors(what: str, work: Callable[[], T]) -> T:
    """Run ``work``; turn every failure into a ``gr.Error`` whose message reaches API clients."""
    try:
        return work()
    except gr.Error:
        raise
    except Cancelled as error:
        raise gr.Error(str(error), title="Stopped") from error
    except StudioError as error:
        logger.info("%s failed: %s", what, error)
        raise gr.Error(str(error)) from error
    except Exception as error:  # the last line of defence: keep serving and say what happened
        logger.exception("%s failed unexpectedly", what)
        raise gr.Error(f"{what} failed: {type(error).__name__}: {error}. The console log has the "
                       "details; the app is still running.") from error


def gradio_progress(progress: gr.Progress) -> ProgressFn:
    """Adapt a backend ``ProgressFn`` call to Gradio's progress bar."""

    def report(stage: str, step: int, total: int) -> None:
        progress((step, total), desc=f"{stage}: step {step}/{total}", unit="steps")

    return report


def session_of(request: gr.Request | None) -> str:
    """A key for this browser session (API clients get one per connection)."""
    return (request.session_hash if request is not None else None) or "anonymous"


def standalone(build: Callable[[Any], None], studio: Any, title: str) -> gr.Blocks:
    """One tab in its own Blocks, for a quick look while working on it."""
    with gr.Blocks(title=title) as blocks:
        build(studio)
    return blocks


def zero_gpu() -> bool:
    """Whether we run on a Hugging Face ZeroGPU Space (the GPU exists only inside wrapped calls)."""
    return bool(os.environ.get("SPACES_ZERO_GPU"))


def on_gpu(handler: Callable[..., T], seconds: Callable[..., int]) -> Callable[..., T]:
    """Wrap a GPU event handler with ``spaces.GPU`` on ZeroGPU; elsewhere return it unchanged.

    ``seconds`` gets the handler's inputs and estimates how long the call holds the GPU: ZeroGPU
    queues short requests first and cuts a call off at its duration, so the estimate should cover
    a cold load plus the steps asked for. ``spaces`` is imported only on ZeroGPU.
    """
    if not zero_gpu():
        return handler
    import spaces  # only installed on Spaces

    return spaces.GPU(duration=seconds)(handler)


def wire_stop(studio: Any, stop: gr.Button, events: list[Any]) -> None:
    """Stop sets this session's Stop flag (the job ends at its next step) and cancels ``events``."""

    def on_stop(request: gr.Request) -> None:
        if studio.stop_job(session_of(request)):
            gr.Info("Stopping after the current step…")

    stop.click(on_stop, None, None, cancels=events, api_visibility="private", queue=False)
