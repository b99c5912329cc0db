"""Live previews: a side channel beside step progress, Gradio-free like the rest of ``backends``.

A caller that wants previews passes ``WithPreviews(progress, preview, every)`` where a
``ProgressFn`` goes. It reports steps exactly as the wrapped function does, so everything that
takes a ``ProgressFn`` (the registry, the memory manager's retry, Stop) works unchanged; a backend
that can preview finds the channel with ``preview_channel(progress)``. Any other ``ProgressFn``
means "no previews", which is the default everywhere (the API endpoints never ask for them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from backends.runtime.progress import ProgressFn

if TYPE_CHECKING:
    from PIL import Image


class PreviewFn(Protocol):
    """Receives one preview per image of the batch after a denoising step.

    Args:
        images: small RGB pictures of what the current latents depict.
        step: steps finished so far in the stage (1-based).
        total: the number of steps in the stage.
    """

    def __call__(self, images: list[Image.Image], step: int, total: int) -> None: ...


@dataclass(frozen=True)
class WithPreviews:
    """A ``ProgressFn`` that also carries a preview sink."""

    #: Where step reports go (and where Stop raises ``Cancelled``).
    progress: ProgressFn
    #: Where previews go; called on the worker thread that runs the job.
    preview: PreviewFn
    #: A preview every this many steps, and always after the last one.
    every: int = 2

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"preview every must be at least 1 step, got {self.every}")

    def __call__(self, stage: str, step: int, total: int) -> None:
        self.progress(stage, step, total)

    def wants(self, step: int, total: int) -> bool:
        """Whether step ``step`` of ``total`` gets a preview."""
        return step % self.every == 0 or step == total


def preview_channel(progress: ProgressFn) -> WithPreviews | None:
    """The preview channel riding on ``progress``, or None when the caller asked for none."""
    return progress if isinstance(progress, WithPreviews) else None


def stopped_notice(done: int, total: int) -> str:
    """The info's line for a batch stopped after ``done`` of its ``total`` images (those are kept)."""
    return f"stopped after {done} of {total} images: the finished ones are kept"


def numbered(progress: ProgressFn, index: int, total: int) -> ProgressFn:
    """``progress`` for image ``index`` of ``total`` made one after another: each stage's label says
    which image it is ("Image 2/4 · Stage C (prior)"), so a progress bar over the whole job sees
    each image's stages as stages of their own. A preview channel rides along unchanged; a job of
    one image keeps the plain labels.
    """
    if total == 1:
        return progress

    def report(stage: str, step: int, total_steps: int) -> None:
        progress(f"Image {index + 1}/{total} · {stage}", step, total_steps)

    channel = preview_channel(progress)
    return report if channel is None else WithPreviews(report, channel.preview, channel.every)
