"""The validated text-to-audio request (``/generate_audio``), checked before any model loads.

No torch here, so the Audio tab validates a request as cheaply as the other tabs do. Every check
raises ``InputError`` naming the public field of ``/generate_audio`` and the allowed values, with
the value shown as it was sent:

- ``prompt``: text, not empty; longer than ``MAX_PROMPT_CHARS`` it is cut there, and the info says
  so (T5 reads 128 tokens anyway), as the image families do;
- ``negative_prompt``: text (empty or None: no negative prompt; the guided half of each step then
  runs on the unconditional zeros, as ``StableAudioPipeline`` does without one);
- ``seconds``: more than 0 and at most ``MAX_SECONDS``;
- ``steps``: a whole number from 1 to ``MAX_STEPS``; ``guidance``: a finite number from 0 to
  ``MAX_GUIDANCE``;
- ``seed``: 0 to 2**32 - 1, or -1 (or empty) for a random one (``parse_seed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backends.runtime.errors import InputError
from backends.runtime.requests import parse_float, parse_int, parse_seed, parse_text, shown

#: Stable Audio Open 1.0 makes "up to 47s" (model card). The network's own limit is a little more:
#: ``transformer.config.sample_size * vae.hop_length / vae.config.sampling_rate`` =
#: 1024 * 2048 / 44100 = 47.55 s, the length it always denoises and decodes; the backend also
#: refuses more than the loaded model's limit, for models with a shorter one.
MAX_SECONDS = 47.0
#: The range of stable-audio-tools' own Gradio interface (steps 1-500, CFG scale 0-25).
MAX_STEPS = 500
MAX_GUIDANCE = 25.0


def parse_seconds(value: Any) -> float:
    """The clip length: a finite number of seconds, more than 0 and at most ``MAX_SECONDS``.

    Raises:
        InputError: naming ``seconds``; type and finiteness errors as ``parse_float`` words them.
    """
    allowed = f"must be more than 0 and at most {MAX_SECONDS:g} seconds, got {shown(value)}"
    try:
        seconds = parse_float("seconds", value, 0.0, MAX_SECONDS)
    except InputError as error:
        if error.detail.startswith("must be between"):  # out of range: say the open lower bound
            raise InputError("seconds", allowed) from None
        raise
    if seconds <= 0:
        raise InputError("seconds", allowed)
    return seconds


@dataclass(frozen=True)
class AudioRequest:
    """One text-to-audio job, validated; ``seed`` is never -1 here."""

    prompt: str
    #: Empty: no negative prompt.
    negative_prompt: str
    #: The clip's length; the audio has ``round(seconds * sample_rate)`` samples.
    seconds: float
    steps: int
    guidance: float
    seed: int
    #: The text fields cut to ``MAX_PROMPT_CHARS`` (``prompt``, ``negative_prompt``).
    truncated: tuple[str, ...] = ()
    #: What was done to the inputs, shown in the info.
    notices: tuple[str, ...] = ()

    @classmethod
    def build(cls, prompt: Any, negative_prompt: Any, seconds: Any, steps: Any, guidance: Any,
              seed: Any) -> AudioRequest:
        """Validate raw inputs in the ``/generate_audio`` order.

        Raises:
            InputError: naming the first invalid field.
        """
        text, cut = parse_text("prompt", prompt)
        if not text.strip():
            raise InputError("prompt", "is empty; describe the sound or music you want")
        negative, cut_negative = parse_text("negative_prompt", negative_prompt)
        return cls(prompt=text, negative_prompt=negative, seconds=parse_seconds(seconds),
                   steps=parse_int("steps", steps, 1, MAX_STEPS),
                   guidance=parse_float("guidance", guidance, 0.0, MAX_GUIDANCE),
                   seed=parse_seed("seed", seed),
                   truncated=tuple(name for name, was in (("prompt", cut), ("negative_prompt", cut_negative)) if was))

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance runs (the pipeline's rule: guidance above 1)."""
        return self.guidance > 1.0

    def as_dict(self) -> dict[str, Any]:
        """The parameters as plain JSON-able values (for the info and the file's metadata)."""
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt, "seconds": self.seconds,
                "steps": self.steps, "guidance": self.guidance, "seed": self.seed,
                "truncated": list(self.truncated), "notices": list(self.notices)}


__all__ = ["MAX_GUIDANCE", "MAX_SECONDS", "MAX_STEPS", "AudioRequest", "parse_seconds"]
