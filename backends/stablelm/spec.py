"""StableLM's spec: its settings with their defaults, and what the registry needs to know.

This module imports no torch; the backend (``backends.stablelm.backend``) is imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.runtime.loading import Source
from backends.runtime.settings import choices
from backends.runtime.spec import BackendSpec
from backends.runtime.tiny import TinyFamily

STABLELM_REPO = "stabilityai/stablelm-2-zephyr-1_6b"


@dataclass
class ChatDefaults:
    """Sampling defaults the Chat tab starts with."""

    #: System prompt pre-filled in the tab; unset (null) means the prompt format's own default:
    #: "You are a helpful assistant." for chat_template, the official prompt for tuned_alpha.
    system_prompt: str | None = None
    #: 0 is greedy decoding (0-2).
    temperature: float = 0.7
    #: Nucleus sampling mass, in (0, 1].
    top_p: float = 0.95
    #: 0 turns top-k filtering off.
    top_k: int = 0
    #: Longest reply in tokens (1-4096); shortened with a notice when the context window is full.
    max_new_tokens: int = 512
    #: 1.0 is off (1-2).
    repetition_penalty: float = 1.0


@dataclass
class StableLMSettings:
    """StableLM chat: which model, its prompt format, dtype and memory mode."""

    #: The causal LM (StableLM 2 Zephyr 1.6B by default; native transformers, no remote code).
    model: Source = field(default_factory=lambda: Source(STABLELM_REPO))
    #: Its tokenizer (usually the same repo).
    tokenizer: Source = field(default_factory=lambda: Source(STABLELM_REPO))
    #: chat_template uses the tokenizer's own template (Zephyr models); tuned_alpha is our
    #: formatter for ``<|SYSTEM|>…<|USER|>…<|ASSISTANT|>`` with its stop tokens.
    prompt_format: str = field(default="chat_template", metadata=choices("chat_template", "tuned_alpha"))
    #: Human name and license shown in the tab.
    display_name: str = "StableLM 2 Zephyr 1.6B"
    license: str = "Stability AI Non-Commercial Research Community License"
    dtype: str = "bfloat16"
    #: auto, gpu, offload or sequential (``backends.runtime.memory.MemoryMode``).
    memory_mode: str = "auto"
    #: Decode StableLM models with our fused layer loop (several times faster than generate() at
    #: batch 1); false uses the model's own forward with a DynamicCache. Other architectures
    #: (GPT-NeoX for Tuned Alpha) always use the latter.
    fused_decode: bool = True
    #: Sampling defaults for the Chat tab.
    defaults: ChatDefaults = field(default_factory=ChatDefaults)


SPEC = BackendSpec(
    name="stablelm",
    family="StableLM",
    tasks=("chat",),
    factory="backends.stablelm.backend:StableLMBackend",
    settings=StableLMSettings,
    license="see the model card (StableLM Zephyr: non-commercial research; Tuned Alpha: CC BY-NC-SA 4.0)",
    license_url="https://huggingface.co/stabilityai/stablelm-2-zephyr-1_6b",
    components=("model",),
    params_m={"stabilityai/stablelm-2-zephyr-1_6b": 1644.4, "stabilityai/stablelm-zephyr-3b": 2795.4,
              "stabilityai/stablelm-tuned-alpha-3b": 3638.5, "stabilityai/stablelm-tuned-alpha-7b": 7869.0},
    tiny=TinyFamily(name="stablelm", builder="backends.stablelm.tiny:build", version="v1"),
)
