"""The prompt's T5 states for Stable Audio Open, with T5 borrowed from the manager for its turn only.

``StableAudioPipeline.encode_prompt`` (diffusers 0.42.1) runs T5 and then the projection model in
one call, and ``__call__`` always passes whatever embeddings it is given through the projection
model again (it calls ``encode_prompt`` with ``prompt_embeds=``). The pipeline therefore cannot take
``encode_prompt``'s output; what it can take is T5's hidden states with their attention masks
(``prompt_embeds``, ``negative_prompt_embeds``, ``attention_mask``, ``negative_attention_mask``),
and that is where it is split: here the T5 half of ``encode_prompt`` runs, line for line (the same
tokenizer call padded to ``model_max_length``, the same forward with the mask, the negative
prompt's padding set to zero), and ``__call__`` does the rest on the DiT's turn: the projection,
the masking, the seconds conditioning (``encode_duration``), the noise (``prepare_latents``) and
every step. The projection model (0.4M parameters in the released model) is lent beside the DiT.
A test holds the result to the stock pipeline's, with and without a negative prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from backends.audio.memory import t5_bytes
from backends.runtime.loading import element_size

if TYPE_CHECKING:
    from backends.runtime.memory import MemoryManager

TEXT_ENCODER = "audio.text_encoder"


@dataclass
class TextStates:
    """T5's states of the prompt (and, with guidance and a negative prompt, of the negative one)."""

    #: (1, model_max_length, d_model) on the compute device, with its (1, model_max_length) mask.
    embeds: torch.Tensor
    mask: torch.Tensor
    negative_embeds: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None
    notices: list[str] = field(default_factory=list)

    def pipeline_arguments(self) -> dict[str, Any]:
        """The ``StableAudioPipeline.__call__`` arguments these states stand for."""
        arguments: dict[str, Any] = {"prompt_embeds": self.embeds, "attention_mask": self.mask}
        if self.negative_embeds is not None:
            arguments.update(negative_prompt_embeds=self.negative_embeds, negative_attention_mask=self.negative_mask)
        return arguments


def truncation_notices(tokenizer: Any, texts: list[tuple[str, str]]) -> list[str]:
    """What T5 cuts off: it reads ``model_max_length`` tokens (128 for the released tokenizer)."""
    limit = tokenizer.model_max_length
    notices = []
    for label, text in texts:
        given = len(tokenizer(text, verbose=False).input_ids)
        if given > limit:
            notices.append(f"{label} truncated to {limit} T5 tokens ({given} given)")
    return notices


def encode(manager: MemoryManager, tokenizer: Any, prompt: str, negative_prompt: str | None,
           timings: dict[str, float]) -> TextStates:
    """T5's states of ``prompt`` and of ``negative_prompt`` (None: none is encoded).

    Args:
        manager: lends ``audio.text_encoder``; the states come back on its device.
        negative_prompt: None without guidance or for an empty negative prompt, which the
            pipeline then replaces by zeros.
        timings: seconds by stage; ``text_encoder`` is added.
    """
    device = manager.device
    texts = [prompt] if negative_prompt is None else [prompt, negative_prompt]
    labels = ["prompt", "negative prompt"][:len(texts)]
    notices = truncation_notices(tokenizer, list(zip(labels, texts)))
    started = time.perf_counter()

    def need(module: torch.nn.Module) -> int:
        return t5_bytes(module.config, element_size(module), tokenizer.model_max_length, len(texts))

    encoded = []
    # The manager places modules outside inference mode; only the compute runs inside it.
    with manager.use(TEXT_ENCODER, need) as text_encoder, torch.inference_mode():
        for text in texts:
            tokens = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                               return_tensors="pt")
            ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
            encoded.append((text_encoder(ids, attention_mask=mask)[0], mask))
    timings["text_encoder"] = timings.get("text_encoder", 0.0) + time.perf_counter() - started
    states = TextStates(embeds=encoded[0][0], mask=encoded[0][1], notices=notices)
    if len(encoded) > 1:
        negative, mask = encoded[1]
        # encode_prompt sets the negative prompt's padding to the null embedding (zeros).
        states.negative_embeds = torch.where(mask.to(torch.bool).unsqueeze(2), negative, 0.0)
        states.negative_mask = mask
    return states
