"""The prompt's conditioning for SD3.5: both CLIPs, then T5, each borrowed from the manager for its turn.

``StableDiffusion3Pipeline.encode_prompt`` runs the three encoders in one call, so all three must
be on the device together (T5-XXL alone is 9.5 GB in bf16). Here the two CLIPs run first, from the
pipeline's own ``_get_clip_prompt_embeds``, and are let go; then T5 runs alone, from its
``_get_t5_prompt_embeds``, on the device, on the CPU, or not at all. ``join`` then does what
``encode_prompt`` does with the parts: the CLIP hidden states side by side, zero-padded to T5's
width, followed by T5's tokens; the pooled vectors side by side. A test checks the result equals
``encode_prompt``'s bit for bit, with T5 and without.

T5 off gives what the pipeline gives with ``text_encoder_3=None``: zeros of the T5 sequence's
shape, in the CLIP encoders' dtype.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from backends.runtime.loading import element_size
from backends.sd3.memory import CLIP_TOKENS, clip_bytes, t5_bytes
from backends.sd3.pipes import TextToImage, assemble

if TYPE_CHECKING:
    from backends.runtime.memory import MemoryManager

TEXT_ENCODER = "sd3.text_encoder"
TEXT_ENCODER_2 = "sd3.text_encoder_2"
TEXT_ENCODER_3 = "sd3.text_encoder_3"


@dataclass
class Tokenizers:
    """The three tokenizers (CLIP-L's, CLIP-G's, T5's)."""

    clip_l: Any
    clip_g: Any
    t5: Any


@dataclass
class Conditioning:
    """One prompt's embeddings, on the compute device."""

    #: (1, 77 + max_sequence_length, T5 width): CLIP-L and CLIP-G hidden states, then T5's.
    embeds: torch.Tensor
    #: (1, CLIP-L projection + CLIP-G projection).
    pooled: torch.Tensor


@dataclass
class PromptEmbeddings:
    """The prompt's conditioning and, with guidance, the negative prompt's."""

    positive: Conditioning
    negative: Conditioning | None
    notices: list[str] = field(default_factory=list)


def join(clip: torch.Tensor, t5: torch.Tensor) -> torch.Tensor:
    """CLIP hidden states zero-padded to T5's width, then T5's tokens after them (``encode_prompt``)."""
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5], dim=-2)


def truncation_notices(tokenizers: Tokenizers, texts: Sequence[tuple[str, str]], max_sequence_length: int,
                       t5_on: bool) -> list[str]:
    """What the encoders cut off: CLIP reads 77 tokens, T5 ``max_sequence_length``."""
    notices = []
    for label, text in texts:
        given = len(tokenizers.clip_l(text, verbose=False).input_ids)
        if given > CLIP_TOKENS:
            notices.append(f"{label} truncated to {CLIP_TOKENS} CLIP tokens ({given} given)")
        if t5_on:
            given = len(tokenizers.t5(text, verbose=False).input_ids)
            if given > max_sequence_length:
                notices.append(f"{label} truncated to {max_sequence_length} T5 tokens ({given} given); "
                               "max_sequence_length goes up to 512")
    return notices


def encode(manager: MemoryManager, tokenizers: Tokenizers, prompt: str, negative_prompt: str | None, *,
           max_sequence_length: int, t5: str, t5_width: Callable[[], int], dtype: torch.dtype,
           timings: dict[str, float]) -> PromptEmbeddings:
    """Encode the prompt (and ``negative_prompt`` unless None, i.e. without guidance).

    Args:
        manager: lends ``sd3.text_encoder``, ``_2`` and ``_3`` (T5; with ``t5`` cpu its RAM copy,
            ``use(..., host=True)``, so only its embeddings move to the device).
        t5: device, cpu or off for this job.
        t5_width: the transformer's ``joint_attention_dim``, the width of T5's zeros when it is off.
        dtype: the CLIP encoders' dtype, as the pipeline's zeros take it.
        timings: seconds by stage; ``text_encoders`` and ``t5`` are added.
    """
    device = manager.device
    texts = [prompt] if negative_prompt is None else [prompt, negative_prompt]
    labels = ["prompt", "negative prompt"][:len(texts)]
    notices = truncation_notices(tokenizers, list(zip(labels, texts)), max_sequence_length, t5 != "off")

    started = time.perf_counter()

    def clip_need(module: torch.nn.Module) -> int:
        return clip_bytes(module.config, element_size(module), len(texts))

    # The manager places modules outside inference mode; only the compute runs inside it.
    with manager.use(TEXT_ENCODER, clip_need) as clip_l, manager.use(TEXT_ENCODER_2, clip_need) as clip_g, \
            torch.inference_mode():
        pipe = assemble(TextToImage, device, text_encoder=clip_l, tokenizer=tokenizers.clip_l,
                        text_encoder_2=clip_g, tokenizer_2=tokenizers.clip_g)
        clips = []
        for text in texts:
            hidden_l, pooled_l = pipe._get_clip_prompt_embeds(text, 1, device, clip_skip=None, clip_model_index=0)
            hidden_g, pooled_g = pipe._get_clip_prompt_embeds(text, 1, device, clip_skip=None, clip_model_index=1)
            clips.append((torch.cat([hidden_l, hidden_g], dim=-1), torch.cat([pooled_l, pooled_g], dim=-1)))
    timings["text_encoders"] = timings.get("text_encoders", 0.0) + time.perf_counter() - started

    started = time.perf_counter()
    t5_states = _t5_states(manager, tokenizers, texts, max_sequence_length, t5, t5_width, dtype)
    if t5 != "off":
        timings["t5"] = timings.get("t5", 0.0) + time.perf_counter() - started
    encoded = [Conditioning(join(hidden, states), pooled) for (hidden, pooled), states in zip(clips, t5_states)]
    return PromptEmbeddings(encoded[0], encoded[1] if len(encoded) > 1 else None, notices)


def _t5_states(manager: MemoryManager, tokenizers: Tokenizers, texts: list[str], length: int, t5: str,
               t5_width: Callable[[], int], dtype: torch.dtype) -> list[torch.Tensor]:
    """T5's hidden states of each text, on the compute device (zeros when ``t5`` is off)."""
    device = manager.device
    if t5 == "off":
        return [torch.zeros((1, length, t5_width()), device=device, dtype=dtype) for _ in texts]

    def run(encoder: torch.nn.Module, where: torch.device) -> list[torch.Tensor]:
        pipe = assemble(TextToImage, where, text_encoder_3=encoder, tokenizer_3=tokenizers.t5)
        return [pipe._get_t5_prompt_embeds(text, 1, length, device=where, dtype=dtype).to(device) for text in texts]

    def need(module: torch.nn.Module) -> int:
        return t5_bytes(module.config, element_size(module), length, len(texts))

    on_cpu = t5 == "cpu"
    with manager.use(TEXT_ENCODER_3, need, host=on_cpu) as encoder, torch.inference_mode():
        return run(encoder, torch.device("cpu") if on_cpu else device)
