"""Helpers every tab shares: error translation at the UI boundary and progress adaptation.

Gradio shows API clients the message of ``gr.Error`` only, so every handler runs its work through
``user_errors``: our own ``StudioError`` keeps its message; anything else is logged with its
traceback and reported with its type, so the user has something to search for.
"""

from __future__ import annotations

import logging
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
