"""StableLM chat: StableLM 2 Zephyr 1.6B, StableLM Zephyr 3B, StableLM Tuned Alpha 3B/7B.

The weights load with transformers' native classes (``stablelm``, ``gpt_neox``) from safetensors
only, never with ``trust_remote_code``. A reply streams from our own decode loop
(``backends.stablelm.decode``), which is several times faster than ``generate()`` at batch 1 (see
``bench/``). The conversation is fitted to the context window before the model is placed
(``backends.stablelm.prompt``), so the memory manager gets a working-memory figure for the real
prompt and reply lengths.

Stop: the registry hands ``stream`` a progress function that raises ``Cancelled`` once Stop is
pressed; it is called before every token, so a reply ends within one token step. Closing the
stream early (Gradio's cancel) exits ``manager.use``, so the model is idle again at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from backends.runtime.errors import UnknownNameError
from backends.runtime.loading import LoadContext, Source, file_on_disk, load_pretrained, torch_dtype
from backends.runtime.memory import MemoryManager
from backends.runtime.placement import Placement
from backends.runtime.progress import ProgressFn
from backends.stablelm.decode import FusedStableLmStepper, SamplingParams, TextStream, TokenStream, make_stepper
from backends.stablelm.prompt import FittedPrompt, default_system_prompt, fit_prompt, make_format
from backends.stablelm.requests import MAX_HISTORY_CHARS, ChatRequest
from backends.stablelm.spec import StableLMSettings
from backends.stablelm.stops import StopStrings

logger = logging.getLogger(__name__)

MODEL = "stablelm.model"
STAGE = "Reply"


@dataclass(frozen=True)
class ChatStats:
    """Figures of one finished reply, shown under the chat and logged."""

    #: Tokens generated (stop tokens not counted).
    tokens: int
    #: Tokens in the fitted prompt.
    prompt_tokens: int
    #: Seconds from the start of the prefill to the first token.
    first_token_s: float
    #: Decoding speed after the first token (the prefill is in ``first_token_s``).
    tokens_per_s: float
    #: Seconds from the start of the prefill to the last token.
    total_s: float
    #: "stop" (end-of-turn token or a stop string), "length" (max_new_tokens) or "cancelled" (Stop).
    stop_reason: str
    #: The reply budget after fitting (can be lower than the request's max_new_tokens).
    max_new_tokens: int
    #: Everything the user should know: trimmed history, a shortened reply budget, cuts.
    notices: tuple[str, ...] = ()
    #: "fused" (our StableLM layer loop) or "transformers" (the model's forward, DynamicCache).
    decode_path: str = "fused"

    def as_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "prompt_tokens": self.prompt_tokens,
                "first_token_s": round(self.first_token_s, 4), "tokens_per_s": round(self.tokens_per_s, 1),
                "total_s": round(self.total_s, 3), "stop_reason": self.stop_reason,
                "max_new_tokens": self.max_new_tokens, "notices": list(self.notices),
                "decode_path": self.decode_path}


@dataclass(frozen=True)
class ChatChunk:
    """One piece of a streamed reply: new text, new notices, and the stats on the last piece."""

    text: str = ""
    notices: tuple[str, ...] = ()
    stats: ChatStats | None = None


def working_bytes(config: Any, dtype_size: int, tokens: int) -> int:
    """Peak memory of one reply on top of the weights, for the memory manager.

    The KV cache for every token, plus the prefill's widest activations (the MLP's two
    intermediate tensors and a few hidden-size ones per prompt token) and the attention scores of
    one layer (materialised when no flash kernel runs, the CPU's case), plus float32 logits.
    """
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", heads) or heads
    kv_cache = 2 * config.num_hidden_layers * kv_heads * head_dim * tokens * dtype_size
    activations = tokens * (3 * config.intermediate_size + 6 * config.hidden_size) * dtype_size
    scores = heads * tokens * tokens * 4
    return kv_cache + activations + scores + 4 * config.vocab_size * 4


class StableLMBackend:
    """StableLM chat on top of the memory manager; one instance serves every request."""

    name = "stablelm"
    tasks = ("chat",)

    def __init__(self, settings: StableLMSettings, manager: MemoryManager, ctx: LoadContext) -> None:
        """Register the model with ``manager``; nothing is loaded yet.

        Args:
            settings: sources, prompt format, dtype and defaults from the preset.
            manager: the memory manager (``register``, ``use``, ``device``).
            ctx: cache and offline settings for ``load_pretrained``.
        """
        self.settings = settings
        self.manager = manager
        self.ctx = ctx
        self.dtype = torch_dtype(settings.dtype)
        self._aux_lock = threading.Lock()
        self._tokenizer: Any = None
        self._config: Any = None
        manager.register(MODEL, self._load_model)

    def component_names(self) -> list[str]:
        """The manager names of this backend's modules."""
        return [MODEL]

    def default_system_prompt(self) -> str:
        """The system prompt a chat starts with (the preset's, else the prompt format's)."""
        return default_system_prompt(self.settings.prompt_format, self.settings.defaults.system_prompt)

    def _load_model(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        # The Auto class is not an nn.Module subclass, so load_pretrained cannot tell that it
        # loads weights: ask for safetensors here (Tuned Alpha's main branch has .bin files only).
        extra = {"variant": self.settings.model.variant} if self.settings.model.variant else {}
        model = load_pretrained(AutoModelForCausalLM, self.settings.model, self.ctx, dtype=self.dtype,
                                use_safetensors=True, trust_remote_code=False, **extra)
        return model.eval().requires_grad_(False)

    def _aux(self) -> tuple[Any, Any]:
        """Tokenizer and model config; small, loaded once and kept."""
        with self._aux_lock:
            if self._tokenizer is None:
                from transformers import AutoConfig, AutoTokenizer

                self._tokenizer = load_pretrained(AutoTokenizer, self.settings.tokenizer, self.ctx,
                                                  trust_remote_code=False)
                self._config = load_pretrained(AutoConfig, _config_source(self.settings.model), self.ctx,
                                               trust_remote_code=False)
            return self._tokenizer, self._config

    def prompt(self, request: ChatRequest) -> FittedPrompt:
        """The fitted prompt for ``request`` (tokenizer only; no model is loaded)."""
        tokenizer, config = self._aux()
        fmt = make_format(self.settings.prompt_format, tokenizer)
        system = self.default_system_prompt() if request.system_prompt is None else request.system_prompt
        context = int(getattr(config, "max_position_embeddings", 0) or tokenizer.model_max_length)

        def encode(text: str) -> list[int]:
            return tokenizer.encode(text, add_special_tokens=False, verbose=False)

        def decode(ids: list[int]) -> str:
            return tokenizer.decode(ids, clean_up_tokenization_spaces=False)

        fitted = fit_prompt(fmt, encode, decode, system, request.history, request.message,
                            request.max_new_tokens, context)
        if request.dropped_messages:
            fitted.notices.insert(0, f"Dropped the {request.dropped_messages} oldest history messages "
                                     f"(the history was longer than {MAX_HISTORY_CHARS:,} characters).")
        return fitted

    # ----- public entry points -------------------------------------------------------------
    def stream(self, task: str, request: ChatRequest, progress: ProgressFn) -> Iterator[ChatChunk]:
        """Stream the reply to ``request``: text pieces, then a last chunk with the stats.

        Raises:
            UnknownNameError: ``task`` is not ``chat``.
            Cancelled: raised by ``progress`` when the user pressed Stop (after the text so far
                was given out).
        """
        if task not in self.tasks:
            raise UnknownNameError(f"Unknown task {task!r} for {self.name}; known tasks: {', '.join(self.tasks)}")
        tokenizer, config = self._aux()
        fitted = self.prompt(request)
        tokens = len(fitted.ids) + fitted.max_new_tokens
        need = working_bytes(config, torch.finfo(self.dtype).bits // 8, tokens)
        stop_ids = make_format(self.settings.prompt_format, tokenizer).stop_tokens(tokenizer)
        sampling = SamplingParams(request.temperature, request.top_p, request.top_k, request.repetition_penalty,
                                  request.seed)
        pending = tuple(fitted.notices)
        # The manager places the model outside inference mode; the stream enters it per step.
        with self.manager.use(MODEL, need) as model:
            stop_ids |= _generation_eos(model)
            vocab = min(len(tokenizer), model.config.vocab_size)
            # Streamed placement (a model too big for the budget) moves weights in forward hooks,
            # which only the model's own forward runs.
            streamed = self.manager.component(MODEL).placement is Placement.OFFLOAD
            with torch.inference_mode():
                stepper = make_stepper(model, tokens, fused=self.settings.fused_decode and not streamed)
            total = fitted.max_new_tokens

            def before_step(done: int) -> None:
                progress(STAGE, done, total)

            token_stream = TokenStream(stepper, fitted.ids, total, sampling, stop_ids, before_step,
                                       self.manager.device, vocab)
            text, stops = TextStream(tokenizer), StopStrings(request.stop)
            started = time.perf_counter()
            first = last = started
            count = 0
            for token in token_stream:
                last = time.perf_counter()
                if count == 0:
                    first = last
                count += 1
                piece = stops.push(text.push(token))
                if piece:
                    yield ChatChunk(piece, pending)
                    pending = ()
                if stops.hit:
                    break
        tail = stops.push(text.flush()) + stops.flush()  # a stop string may complete in the last bytes
        decode_s = last - first
        stats = ChatStats(tokens=count, prompt_tokens=len(fitted.ids), first_token_s=first - started,
                          tokens_per_s=(count - 1) / decode_s if count > 1 and decode_s > 0 else 0.0,
                          total_s=last - started, stop_reason="stop" if stops.hit else token_stream.stop_reason,
                          max_new_tokens=total, notices=tuple(fitted.notices),
                          decode_path="fused" if isinstance(stepper, FusedStableLmStepper) else "transformers")
        logger.info("stablelm reply: %d prompt tokens, %d new in %.2f s (%.1f tokens/s, first after %.3f s, %s)",
                    stats.prompt_tokens, count, stats.total_s, stats.tokens_per_s, stats.first_token_s,
                    stats.stop_reason)
        yield ChatChunk(tail, pending, stats)


def context_window(settings: StableLMSettings, ctx: LoadContext) -> int | None:
    """The model's context window in tokens (prompt and reply together), read from files on disk only.

    For the Chat tab's Max new tokens, asked when a page opens, which must never start a download
    or a tiny build: ``config.json`` is read as JSON if it is on disk. Not through ``AutoConfig``:
    a first ``from transformers import ...`` racing another thread's (a reply starting) fails with
    ImportError in transformers 5.24. None means "not known yet" (not on disk, or no
    ``max_position_embeddings`` in it).
    """
    path = file_on_disk(_config_source(settings.model), "config.json", ctx)
    if path is None:
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("cannot read %s: %s", path, error)
        return None
    context = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return context if isinstance(context, int) and context > 0 else None


def _config_source(source: Source) -> Source:
    """The model's source without a weights variant (config.json has none)."""
    return Source(source.repo, source.subfolder, None, source.revision)


def _generation_eos(model: Any) -> set[int]:
    """End-of-turn ids from the model's generation config (an int or a list)."""
    config = getattr(model, "generation_config", None)
    value = getattr(config, "eos_token_id", None)
    if value is None:
        return set()
    return {int(value)} if isinstance(value, int) else {int(v) for v in value}
