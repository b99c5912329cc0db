"""Chat scenario: our streaming decode loop against stock ``generate()`` on the same model.

Both decode greedily from the same prompt for exactly ``--tokens`` new tokens (``generate`` gets
``min_new_tokens`` so it cannot stop early; our loop gets no stop tokens) in the same process,
after a warm-up, interleaved run by run so drift hits both alike; medians are reported. Tokens/s
is end to end (prefill included) for both. "Ours" is the path the Chat tab runs: the fused
StableLM stepper, our sampler and the streaming detokenizer. "Ours, transformers forward" is the
same loop over the model's own forward with a ``DynamicCache``, to show what each part gives.

``--size real`` builds a StableLM-2-1.6B-shaped model with random weights in bfloat16 on the GPU
(config from NOTES.md); its prompt comes from the tiny tokenizer, whose ids are valid there too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from bench.common import (
    BenchOptions,
    device_name,
    format_table,
    median,
    peak_bytes,
    process_peak_rss_bytes,
    reset_peak,
    timed,
)

logger = logging.getLogger(__name__)

#: StableLM 2 1.6B (NOTES.md, "Real architecture configs").
REAL_CONFIG: dict[str, Any] = dict(vocab_size=100352, hidden_size=2048, intermediate_size=5632,
                                   num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                                   partial_rotary_factor=0.25, use_qkv_bias=True, max_position_embeddings=4096)
MESSAGE = ("Write a short poem about the sea, then tell me three things about how a language model "
           "answers a question, one line each, please.")
VARIANTS = (("ours", "ours (fused)"), ("ours_hf", "ours, transformers forward"), ("stock", "stock generate()"))


def build_real_model(device: torch.device, dtype: torch.dtype = torch.bfloat16, **overrides: Any) -> Any:
    """A random-weight StableLM with the 1.6B architecture (``overrides`` shrink it for tests)."""
    from transformers import StableLmConfig, StableLmForCausalLM

    config = StableLmConfig(**{**REAL_CONFIG, **overrides})
    with torch.device(device):
        model = StableLmForCausalLM._from_config(config, dtype=dtype)
    # Parameters built under a device context can miss it (NOTES.md, AlphaBlender); be sure.
    return model.to(device).eval().requires_grad_(False)


def load_tiny_tokenizer(options: BenchOptions) -> Any:
    """The tiny StableLM's tokenizer (built offline on first use)."""
    from transformers import AutoTokenizer

    from backends.families import load_context
    from backends.runtime.loading import Source, load_pretrained

    return load_pretrained(AutoTokenizer, Source("tiny:stablelm"), load_context(options.cache_dir, offline=True))


def load_tiny(options: BenchOptions) -> tuple[Any, Any]:
    """The tiny StableLM and its tokenizer, through the app's own loading path."""
    from transformers import AutoModelForCausalLM

    from backends.families import load_context
    from backends.runtime.loading import Source, load_pretrained

    ctx = load_context(cache_dir=options.cache_dir, offline=True)
    tokenizer = load_tiny_tokenizer(options)
    model = load_pretrained(AutoModelForCausalLM, Source("tiny:stablelm"), ctx, dtype=torch.float32,
                            use_safetensors=True)
    return model.to(options.device).eval().requires_grad_(False), tokenizer


def ours(model: Any, tokenizer: Any, ids: list[int], tokens: int, fused: bool,
         device: torch.device) -> tuple[list[int], float]:
    """One streamed reply through our loop; returns the tokens and the seconds to the first one."""
    from backends.stablelm.decode import SamplingParams, TextStream, TokenStream, make_stepper

    started = time.perf_counter()
    with torch.inference_mode():
        stepper = make_stepper(model, len(ids) + tokens, fused=fused)
    stream = TokenStream(stepper, ids, tokens, SamplingParams(), set(), lambda _: None, device,
                         model.config.vocab_size)
    text = TextStream(tokenizer)
    out: list[int] = []
    first = 0.0
    for token in stream:
        if not out:
            first = time.perf_counter() - started
        out.append(token)
        text.push(token)
    text.flush()
    return out, first


def stock(model: Any, ids: list[int], tokens: int, device: torch.device) -> list[int]:
    """One reply from ``generate()``: greedy, exactly ``tokens`` new tokens."""
    from transformers import GenerationConfig

    eos = model.config.eos_token_id
    config = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                              eos_token_id=eos, pad_token_id=eos)
    inputs = torch.tensor([ids], device=device)
    with torch.inference_mode():
        output = model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=config)
    return output[0, len(ids):].tolist()


def run(options: BenchOptions) -> dict[str, Any]:
    """Time the three variants; returns the JSON-able result (its keys are listed in the README)."""
    if options.size == "real":
        if options.device.type != "cuda":
            raise SystemExit("--size real needs --device cuda: a 1.6B model decodes too slowly on a CPU "
                             "to say anything about per-token overhead")
        tokenizer = load_tiny_tokenizer(options)
        model = build_real_model(options.device)
    else:
        model, tokenizer = load_tiny(options)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": MESSAGE}], tokenize=False,
                                        add_generation_prompt=True)
    ids = tokenizer.encode(ids, add_special_tokens=False)
    n, device = options.tokens, options.device
    calls = {
        "ours": lambda: ours(model, tokenizer, ids, n, True, device),
        "ours_hf": lambda: ours(model, tokenizer, ids, n, False, device),
        "stock": lambda: (stock(model, ids, n, device), None),
    }
    for _ in range(options.warmup):
        for call in calls.values():
            call()
        stock(model, ids, 1, device)
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    firsts: dict[str, list[float]] = {name: [] for name in calls}
    peaks: dict[str, int | None] = {}
    outputs: dict[str, list[int]] = {}
    for _ in range(options.runs):
        for name, call in calls.items():
            reset_peak(device)
            elapsed, (tokens, first) = timed(call, device)
            peaks[name] = max(peaks.get(name) or 0, peak_bytes(device) or 0) if device.type == "cuda" else None
            seconds[name].append(elapsed)
            outputs[name] = tokens
            if first is not None:
                firsts[name].append(first)
        # Stock time to first token: a one-token generate() (prefill plus one sampling step).
        firsts["stock"].append(timed(lambda: stock(model, ids, 1, device), device)[0])
    result: dict[str, Any] = {
        "scenario": "chat",
        "model": {"size": options.size, "architecture": model.config.model_type,
                  "parameters": sum(p.numel() for p in model.parameters()), "dtype": str(model.dtype).split(".")[-1],
                  "device": device_name(device), "layers": model.config.num_hidden_layers,
                  "hidden_size": model.config.hidden_size, "vocab_size": model.config.vocab_size},
        "prompt_tokens": len(ids), "new_tokens": n, "runs": options.runs, "warmup": options.warmup,
        "process_peak_rss_bytes": process_peak_rss_bytes(),
    }
    for name in calls:
        total = median(seconds[name])
        result[name] = {"tokens_per_s": n / total, "first_token_s": median(firsts[name]), "total_s": total,
                        "peak_memory_bytes": peaks[name], "tokens": len(outputs[name])}
    result["ratio"] = result["ours"]["tokens_per_s"] / result["stock"]["tokens_per_s"]
    result["ratio_transformers_forward"] = result["ours_hf"]["tokens_per_s"] / result["stock"]["tokens_per_s"]
    result["same_tokens"] = outputs["ours"] == outputs["stock"] == outputs["ours_hf"]
    return result


def report(result: dict[str, Any]) -> str:
    """The printed table for one chat result."""
    rows = [["variant", "tokens/s", "first token (ms)", "total (s)", "peak memory (MB)"]]
    for name, label in VARIANTS:
        v = result[name]
        peak = "n/a" if v["peak_memory_bytes"] is None else f"{v['peak_memory_bytes'] / 2**20:.0f}"
        rows.append([label, f"{v['tokens_per_s']:.1f}", f"{v['first_token_s'] * 1000:.1f}", f"{v['total_s']:.3f}",
                     peak])
    m = result["model"]
    head = (f"chat: {m['size']} {m['architecture']} ({m['parameters'] / 1e6:.1f}M parameters, {m['dtype']}) on "
            f"{m['device']}; {result['prompt_tokens']} prompt + {result['new_tokens']} new tokens, median of "
            f"{result['runs']} runs")
    tail = (f"ratio ours/stock: {result['ratio']:.2f}x (transformers forward in our loop: "
            f"{result['ratio_transformers_forward']:.2f}x); same greedy tokens: "
            f"{'yes' if result['same_tokens'] else 'NO'}; process peak RSS "
            f"{result['process_peak_rss_bytes'] / 2**20:.0f} MB")
    return "\n".join([head, format_table(rows), tail])
