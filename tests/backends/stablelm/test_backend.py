"""StableLM chat backend on the tiny model: prompt formats, our decode loop against generate(),
streaming text, Stop, and fitting long conversations into the context window."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from backends.families import load_context, load_preset
from backends.runtime.errors import Cancelled
from backends.runtime.loading import LoadContext, Source, load_pretrained
from backends.runtime.memory import MemoryManager
from backends.runtime.probe import GB, FakeProbe
from backends.stablelm.backend import MODEL, StableLMBackend, working_bytes
from backends.stablelm.decode import (
    FusedStableLmStepper,
    HFStepper,
    SamplingParams,
    TextStream,
    TokenStream,
    fused_unsupported,
    make_stepper,
)
from backends.stablelm.prompt import (
    TUNED_ALPHA_SYSTEM_PROMPT,
    ChatTemplateFormat,
    TunedAlphaFormat,
    fit_prompt,
    render_tuned_alpha,
)
from backends.stablelm.requests import ChatMessage, ChatRequest

CPU = torch.device("cpu")
HISTORY = [ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello!"),
           ChatMessage("user", "Name a colour."), ChatMessage("assistant", "Blue."),
           ChatMessage("user", "Another?"), ChatMessage("assistant", "Green.")]


@pytest.fixture(scope="module")
def ctx(tiny_cache: Path) -> LoadContext:
    return load_context(cache_dir=tiny_cache, offline=True)


@pytest.fixture(scope="module")
def tokenizer(ctx: LoadContext) -> Any:
    from transformers import AutoTokenizer

    return load_pretrained(AutoTokenizer, Source("tiny:stablelm"), ctx)


@pytest.fixture(scope="module")
def model(ctx: LoadContext) -> Any:
    from transformers import AutoModelForCausalLM

    return load_pretrained(AutoModelForCausalLM, Source("tiny:stablelm"), ctx, dtype=torch.float32,
                           use_safetensors=True).eval()


def make_backend(ctx: LoadContext, **changes: Any) -> tuple[StableLMBackend, MemoryManager]:
    settings = dataclasses.replace(load_preset("tiny").settings.stablelm, **changes)
    manager = MemoryManager(FakeProbe(device_total=8 * GB), "cpu")
    return StableLMBackend(settings, manager, ctx), manager


def request(message: str = "Write a poem", **overrides: Any) -> ChatRequest:
    values = dict(history=[], system_prompt=None, temperature=0, top_p=1.0, max_new_tokens=24)
    return ChatRequest.build(message, **{**values, **overrides})


def ours(model: Any, ids: list[int], count: int, fused: bool, sampling: SamplingParams = SamplingParams(),
         stop: set[int] = frozenset()) -> list[int]:  # type: ignore[assignment]
    with torch.inference_mode():
        stepper = make_stepper(model, len(ids) + count, fused=fused)
    return list(TokenStream(stepper, ids, count, sampling, set(stop), lambda _: None, CPU, model.config.vocab_size))


def stock(model: Any, ids: list[int], count: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=count, min_new_tokens=count, do_sample=False)
    return out[0, len(ids):].tolist()


# ----- prompt formats ------------------------------------------------------------------------
def test_zephyr_prompt_from_the_tokenizers_chat_template(tokenizer: Any) -> None:
    text = ChatTemplateFormat(tokenizer).render("Be brief.", [*HISTORY, ChatMessage("user", "And a third?")])
    assert text == ("<|system|>\nBe brief.<|endoftext|>\n<|user|>\nHi<|endoftext|>\n<|assistant|>\nHello!<|endoftext|>\n"
                    "<|user|>\nName a colour.<|endoftext|>\n<|assistant|>\nBlue.<|endoftext|>\n"
                    "<|user|>\nAnother?<|endoftext|>\n<|assistant|>\nGreen.<|endoftext|>\n"
                    "<|user|>\nAnd a third?<|endoftext|>\n<|assistant|>\n")


def test_tuned_alpha_prompt_and_stop_tokens(tokenizer: Any, ctx: LoadContext) -> None:
    text = render_tuned_alpha(TUNED_ALPHA_SYSTEM_PROMPT, [*HISTORY, ChatMessage("user", "And a third?")])
    assert text == ("<|SYSTEM|># StableLM Tuned (Alpha version)\n"
                    "- StableLM is a helpful and harmless open-source AI language model developed by StabilityAI.\n"
                    "- StableLM is excited to be able to help the user, but will refuse to do anything that could "
                    "be considered harmful to the user.\n"
                    "- StableLM is more than just an information source, StableLM is also able to write poetry, "
                    "short stories, and make jokes.\n"
                    "- StableLM will refuse to participate in anything that could harm a human.\n"
                    "<|USER|>Hi<|ASSISTANT|>Hello!<|USER|>Name a colour.<|ASSISTANT|>Blue.<|USER|>Another?"
                    "<|ASSISTANT|>Green.<|USER|>And a third?<|ASSISTANT|>")
    vocab = tokenizer.get_vocab()
    names = ("<|USER|>", "<|ASSISTANT|>", "<|SYSTEM|>", "<|padding|>", "<|endoftext|>")
    assert TunedAlphaFormat().stop_tokens(tokenizer) == {vocab[name] for name in names}
    backend, _ = make_backend(ctx, prompt_format="tuned_alpha")
    assert backend.default_system_prompt() == TUNED_ALPHA_SYSTEM_PROMPT
    fitted = backend.prompt(request("Hi"))  # the role markers are single special tokens
    assert fitted.ids[0] == vocab["<|SYSTEM|>"] and fitted.ids[-1] == vocab["<|ASSISTANT|>"]
    chunks = list(backend.stream("chat", request("Hi"), lambda *_: None))
    assert chunks[-1].stats is not None and chunks[-1].stats.tokens >= 1


def test_template_without_a_system_role_gets_the_system_prompt_in_the_first_message() -> None:
    class NoSystem:
        chat_template = "stub"

        def apply_chat_template(self, turns: list[dict[str, str]], **_: Any) -> str:
            if turns[0]["role"] == "system":
                raise ValueError("System role not supported")
            return "|".join(f"{t['role']}:{t['content']}" for t in turns)

    text = ChatTemplateFormat(NoSystem()).render("Be brief.", [ChatMessage("user", "Hi")])
    assert text == "user:Be brief.\n\nHi"


# ----- the decode loop -----------------------------------------------------------------------
def test_greedy_decoding_equals_generate_token_for_token(model: Any, tokenizer: Any) -> None:
    ids = tokenizer.encode(ChatTemplateFormat(tokenizer).render("You are kind.", [ChatMessage("user", "hello")]),
                           add_special_tokens=False)
    expected = stock(model, ids, 40)
    with torch.inference_mode():
        assert isinstance(make_stepper(model, 64, fused=True), FusedStableLmStepper)
        assert isinstance(make_stepper(model, 64, fused=False), HFStepper)
    assert ours(model, ids, 40, fused=True) == expected
    assert ours(model, ids, 40, fused=False) == expected


def test_general_path_runs_gpt_neox_like_generate() -> None:
    """Tuned Alpha is GPT-NeoX: the fused path declines it and the DynamicCache path matches."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, rotary_pct=0.25, max_position_embeddings=128,
                           eos_token_id=0, pad_token_id=0)
    neox = GPTNeoXForCausalLM(config).eval()
    assert "gpt_neox" in (fused_unsupported(config) or "")
    ids = list(range(5, 25))
    assert ours(neox, ids, 20, fused=True) == stock(neox, ids, 20)


class ScriptedStepper:
    """Logits that make greedy decoding follow a script (for stop and penalty rules)."""

    def __init__(self, script: list[dict[int, float]], vocab: int = 8) -> None:
        self.script, self.vocab, self.calls = iter(script), vocab, 0

    def _next(self) -> torch.Tensor:
        self.calls += 1
        logits = torch.zeros(1, self.vocab)
        for token, value in next(self.script).items():
            logits[0, token] = value
        return logits

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        return self._next()

    def step(self, token: torch.Tensor) -> torch.Tensor:
        return self._next()


def test_stream_ends_at_a_stop_token_or_the_length() -> None:
    script = [{3: 1.0}, {4: 1.0}, {7: 1.0}, {5: 1.0}]
    stream = TokenStream(ScriptedStepper(script), [1], 4, SamplingParams(), {7}, lambda _: None, CPU, 8)
    assert list(stream) == [3, 4] and stream.stop_reason == "stop"
    stream = TokenStream(ScriptedStepper(script), [1], 2, SamplingParams(), {7}, lambda _: None, CPU, 8)
    assert list(stream) == [3, 4] and stream.stop_reason == "length"


def test_repetition_penalty_and_sampling_rules(model: Any) -> None:
    scores = {2: 2.0, 3: 1.5}
    penalised = SamplingParams(repetition_penalty=2.0)
    stream = TokenStream(ScriptedStepper([scores] * 3), [1], 3, penalised, set(), lambda _: None, CPU, 8)
    assert list(stream) == [2, 3, 2]  # 2 seen: 2/2 = 1.0 < 1.5; both seen: 1.0 > 0.75
    ids = list(range(10, 40))
    greedy = ours(model, ids, 16, fused=True)
    assert ours(model, ids, 16, True, SamplingParams(temperature=1.0, top_k=1, seed=1)) == greedy
    assert ours(model, ids, 16, True, SamplingParams(temperature=1.0, top_p=1e-6, seed=1)) == greedy
    hot = SamplingParams(temperature=1.5, top_p=0.9, top_k=50, seed=7)
    assert ours(model, ids, 16, True, hot) == ours(model, ids, 16, True, hot)  # the seed decides


def test_text_stream_never_splits_a_character(tokenizer: Any) -> None:
    text = "héllo wörld, 世界 🎉 ok <|USER|> done"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.encode("utf-8")) // 2  # several tokens per multi-byte character
    stream = TextStream(tokenizer)
    pieces = [stream.push(token) for token in ids] + [stream.flush()]
    assert "".join(pieces) == text.replace("<|USER|>", "")  # special tokens are not shown
    assert not any("\ufffd" in piece for piece in pieces)
    assert sum(1 for piece in pieces if piece) > 10


# ----- the backend ---------------------------------------------------------------------------
def test_backend_streams_text_then_stats_and_leaves_the_model_idle(ctx: LoadContext, model: Any,
                                                                   tokenizer: Any) -> None:
    backend, manager = make_backend(ctx)
    chunks = list(manager.stream(lambda: backend.stream("chat", request(), lambda *_: None)))
    assert sum(1 for c in chunks if c.text) > 3 and all(c.stats is None for c in chunks[:-1])
    stats = chunks[-1].stats
    assert stats is not None and stats.stop_reason in ("stop", "length") and stats.tokens <= 24
    assert stats.tokens_per_s > 0 and 0 < stats.first_token_s <= stats.total_s
    fitted = backend.prompt(request())
    assert fitted.text.startswith("<|system|>\nYou are a helpful assistant.<|endoftext|>\n<|user|>\nWrite a poem")
    expected = ours(model, fitted.ids, stats.tokens, fused=True)
    assert "".join(c.text for c in chunks) == tokenizer.decode(expected, skip_special_tokens=True)
    assert manager.component(MODEL).in_use == 0


def test_stop_ends_the_reply_within_one_token_and_frees_the_model(ctx: LoadContext) -> None:
    backend, manager = make_backend(ctx)
    calls: list[int] = []

    def progress(stage: str, step: int, total: int) -> None:
        calls.append(step)
        if step == 3:
            raise Cancelled("Stopped by the user")

    texts = []
    with pytest.raises(Cancelled):
        for chunk in manager.stream(lambda: backend.stream("chat", request(max_new_tokens=200), progress)):
            texts.append(chunk.text)
    assert calls == [0, 1, 2, 3]  # one check per token, and nothing after Stop
    assert len(texts) <= 2  # tokens 0 and 1 were given out; token 2 was computed, never shown
    assert manager.component(MODEL).in_use == 0
    assert manager.run(lambda: "free") == "free"

    stream = manager.stream(lambda: backend.stream("chat", request(max_new_tokens=200), lambda *_: None))
    next(stream)
    stream.close()  # what Gradio does when an event is cancelled
    assert manager.component(MODEL).in_use == 0 and manager.run(lambda: "free") == "free"


def test_long_history_is_trimmed_keeping_the_system_prompt_and_newest_turns(ctx: LoadContext) -> None:
    backend, _ = make_backend(ctx)
    history = []
    for turn in range(40):
        history += [{"role": "user", "content": f"question {turn} " + "words " * 10},
                    {"role": "assistant", "content": f"answer {turn} " + "words " * 10}]
    fitted = backend.prompt(request("the newest question", history=history, system_prompt="SYSTEM RULES"))
    assert len(fitted.ids) + fitted.max_new_tokens <= 1024 and fitted.max_new_tokens == 24
    assert fitted.dropped_messages > 0 and fitted.dropped_messages % 2 == 0
    assert fitted.text.startswith("<|system|>\nSYSTEM RULES<|endoftext|>\n<|user|>\nquestion ")
    assert "answer 39 " in fitted.text and "question 0 " not in fitted.text
    assert fitted.text.endswith("<|user|>\nthe newest question<|endoftext|>\n<|assistant|>\n")
    assert "oldest messages" in fitted.notices[0]


class CharFormat:
    """A format whose tokens are characters, so budgets are easy to reason about."""

    def render(self, system: str, messages: list[ChatMessage]) -> str:
        return f"[{system}]" + "".join(f"<{m.role[0]}>{m.content}" for m in messages) + "<a>"


def encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def decode(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def test_fit_prompt_shortens_the_reply_then_drops_turns_then_cuts_the_middle() -> None:
    fmt, history = CharFormat(), [ChatMessage("user", "u" * 20), ChatMessage("assistant", "a" * 20)]
    fitted = fit_prompt(fmt, encode, decode, "S", history, "hello", 30, 200)
    assert fitted.max_new_tokens == 30 and fitted.notices == []
    fitted = fit_prompt(fmt, encode, decode, "S", history, "hello", 150, 200)  # reply shortened first
    assert fitted.max_new_tokens == 200 - len(fitted.ids) and "Reply limited" in fitted.notices[0]
    assert fitted.dropped_messages == 0
    fitted = fit_prompt(fmt, encode, decode, "S", history * 3, "hello", 30, 100)
    assert fitted.dropped_messages == 4 and fitted.text == "[S]<u>" + "u" * 20 + "<a>" + "a" * 20 + "<u>hello<a>"
    message = "START " + "x" * 300 + " END?"
    fitted = fit_prompt(fmt, encode, decode, "S", history, message, 30, 100)
    assert len(fitted.ids) + fitted.max_new_tokens <= 100 and fitted.max_new_tokens >= 25
    assert fitted.text.startswith("[S]<u>START") and fitted.text.endswith(" END?<a>") and "[…]" in fitted.text
    assert [n.split(" ")[1] for n in fitted.notices] == ["all", "message", "limited"]


def test_working_memory_counts_the_kv_cache() -> None:
    from transformers import StableLmConfig

    from bench.chat import REAL_CONFIG

    config = StableLmConfig(**REAL_CONFIG)
    kv = 2 * 24 * 32 * 64 * 4096 * 2  # keys and values, 24 layers, 4096 tokens, bf16: 805 MB
    assert kv < working_bytes(config, 2, 4096) < kv + 3 * GB
    assert fused_unsupported(config) is None
    assert "qk_layernorm" in (fused_unsupported(StableLmConfig(qk_layernorm=True)) or "")


def test_a_model_streamed_block_by_block_decodes_through_its_own_forward(ctx: LoadContext) -> None:
    """Streaming moves weights in forward hooks, which the fused path would bypass."""
    settings = load_preset("tiny").settings.stablelm
    manager = MemoryManager(FakeProbe(device_total=8 * GB), "cpu", budget_bytes=400_000, reserve_bytes=0)
    backend = StableLMBackend(settings, manager, ctx)
    chunks = list(manager.stream(lambda: backend.stream("chat", request(max_new_tokens=8), lambda *_: None)))
    stats = chunks[-1].stats
    assert stats is not None and stats.decode_path == "transformers" and stats.tokens >= 1
    backend, manager = make_backend(ctx)
    chunks = list(manager.stream(lambda: backend.stream("chat", request(max_new_tokens=8), lambda *_: None)))
    assert chunks[-1].stats is not None and chunks[-1].stats.decode_path == "fused"
