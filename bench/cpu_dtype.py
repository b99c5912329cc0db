"""CPU dtype scenario: what bfloat16 gives over float32 on this CPU, and how close chat gets to the limit.

Measured in one process, float32 and bfloat16 interleaved run by run, medians reported:

* **memory bandwidth**: a plain copy of a 1 GiB tensor (``dst.copy_(src)``), counted as bytes
  read plus bytes written (the STREAM "copy" convention), the fastest of 7;
* **chat**: the StableLM 2 1.6B shape (random weights, ``bench.chat.build_real_model``) through
  our fused decode loop (``bench.chat.ours``), the tiny tokenizer's chat prompt (77 tokens) plus
  ``--tokens`` new ones: tokens/s end to end, the first token (prefill) and decode alone;
* **the physical limit**: the weight bytes one decode step reads (every parameter but the
  embedding table, of which a step reads one row) against the copy bandwidth gives the
  bandwidth-bound ceiling in tokens/s; decode tokens/s over it is the fraction to quote;
* **images**: one stage C lite layer (``SDCascadeResBlock`` + ``SDCascadeTimestepBlock`` +
  ``SDCascadeAttnBlock`` at 1536 channels, 24 heads) on the 18x18 latent of a 768x768 request
  (the cpu preset's size), batch 2 for guidance; and stage A (``PaellaVQModel`` defaults, 18.4M)
  decoding a 16x16 latent to 64x64 pixels, with the largest pixel difference bf16 - float32.

Run it on its own (the CPU, real shapes, 11 GB of RAM at the peak; one run of each is about 4
minutes on 2 idle cores of an AVX2 EPYC, 8 on busy ones, most of it the bf16 prefill)::

    HF_HUB_OFFLINE=1 python -m bench.cpu_dtype [--tokens 16] [--runs 1] [--warmup 1] [--out cpu.json]

``--quick`` shrinks every shape (seconds; a smoke test of the code, not a measurement).
``run(options)`` and ``report(result)`` follow the other scenarios, for ``python -m bench``;
there ``--size tiny`` means the shrunk shapes and ``--size real`` the real ones.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from bench.chat import MESSAGE, build_real_model, load_tiny_tokenizer, ours
from bench.common import BenchOptions, device_name, format_table, measure, median, timed

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GIB = 2**30
#: Shrunk shapes for ``--size tiny`` / ``--quick``: the same code in seconds.
TINY_CHAT = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=100352)
#: Stage C lite (NOTES.md): 1536 channels, 24 heads, conditioning 1536; the clip sequence is
#: 77 text tokens + 4 pooled-text + 4 image tokens; a 768x768 request makes an 18x18 latent.
REAL_LAYER = dict(channels=1536, heads=24, side=18, cond_tokens=85, batch=2)
TINY_LAYER = dict(channels=64, heads=4, side=8, cond_tokens=8, batch=2)


def copy_bandwidth(size_bytes: int, runs: int) -> dict[str, Any]:
    """GB/s of ``dst.copy_(src)`` for a ``size_bytes`` tensor, read plus write, over ``runs`` copies.

    ``gb_per_s`` is the fastest copy's: the limit is what the memory can do, and on a shared
    machine the slower copies measure the neighbours (the median is given beside it).
    """
    source = torch.ones(size_bytes, dtype=torch.uint8)
    target = torch.empty_like(source)
    target.copy_(source)  # touch every page once, so the timed copies move memory only
    seconds = [timed(lambda: target.copy_(source), torch.device("cpu"))[0] for _ in range(runs)]
    return {"bytes": size_bytes, "runs": runs, "best_s": min(seconds), "median_s": median(seconds),
            "gb_per_s": 2 * size_bytes / min(seconds) / 1e9,
            "median_gb_per_s": 2 * size_bytes / median(seconds) / 1e9}


def weight_bytes_per_token(model: Any) -> int:
    """Bytes of weights one decode step reads: every parameter but the embedding table (one row)."""
    embed = model.get_input_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed)
    return total + embed.shape[1] * embed.element_size()


def chat(options: BenchOptions, real: bool) -> dict[str, Any]:
    """Tokens/s of our decode loop on the 1.6B shape (or a shrunk one), per dtype."""
    tokenizer = load_tiny_tokenizer(options)
    text = tokenizer.apply_chat_template([{"role": "user", "content": MESSAGE}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer.encode(text, add_special_tokens=False)
    n, device = options.tokens, torch.device("cpu")
    overrides = {} if real else TINY_CHAT
    models = {name: build_real_model(device, dtype, **overrides) for name, dtype in DTYPES.items()}
    calls = {name: (lambda m=model: ours(m, tokenizer, ids, n, True, device)) for name, model in models.items()}
    for _ in range(options.warmup):  # a short reply: a CPU has no kernels to compile, only memory to touch
        for model in models.values():
            ours(model, tokenizer, ids[:8], 2, True, device)
    totals: dict[str, list[float]] = {name: [] for name in calls}
    firsts: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(options.runs):
        for name, call in calls.items():
            elapsed, (_, first) = timed(call, device)
            totals[name].append(elapsed)
            firsts[name].append(first)
    result: dict[str, Any] = {"prompt_tokens": len(ids), "new_tokens": n,
                              "parameters": sum(p.numel() for p in models["float32"].parameters())}
    for name, model in models.items():
        total, first = median(totals[name]), median(firsts[name])
        result[name] = {"tokens_per_s": n / total, "first_token_s": first, "total_s": total,
                        "decode_tokens_per_s": (n - 1) / (total - first) if n > 1 else None,
                        "weight_bytes_per_token": weight_bytes_per_token(model)}
    result["ratio"] = result["bfloat16"]["tokens_per_s"] / result["float32"]["tokens_per_s"]
    return result


def cascade_layer(options: BenchOptions, shape: dict[str, int]) -> dict[str, Any]:
    """Seconds of one stage C layer (res + timestep + attention block) per dtype."""
    from diffusers.models.unets.unet_stable_cascade import (
        SDCascadeAttnBlock,
        SDCascadeResBlock,
        SDCascadeTimestepBlock,
    )

    c, batch, side = shape["channels"], shape["batch"], shape["side"]
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([SDCascadeResBlock(c), SDCascadeTimestepBlock(c, 64, ["sca", "crp"]),
                                  SDCascadeAttnBlock(c, c, shape["heads"])]).eval().requires_grad_(False)
    x = torch.randn(batch, c, side, side)
    t = torch.randn(batch, 64 * 3)
    cond = torch.randn(batch, shape["cond_tokens"], c)

    def layer(dtype: torch.dtype) -> Callable[[], torch.Tensor]:
        module = _copy(blocks, dtype)
        inputs = (x.to(dtype), t.to(dtype), cond.to(dtype))

        def call() -> torch.Tensor:
            with torch.inference_mode():
                h = module[0](inputs[0])
                return module[2](module[1](h, inputs[1]), inputs[2])
        return call

    times = measure({name: layer(dtype) for name, dtype in DTYPES.items()}, options)
    return {"shape": shape, **{name: {"median_s": v["median_s"], "runs_s": v["runs_s"]} for name, v in times.items()},
            "ratio": times["float32"]["median_s"] / times["bfloat16"]["median_s"]}


def vqgan_decode(options: BenchOptions, side: int) -> dict[str, Any]:
    """Seconds of stage A decoding a ``side``-square latent per dtype, and bf16's largest pixel error."""
    from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel

    torch.manual_seed(0)
    model = PaellaVQModel().eval().requires_grad_(False)
    latents = torch.randn(1, model.config.latent_channels, side, side) * 0.5
    decoders = {name: _copy(model, dtype) for name, dtype in DTYPES.items()}

    def decode(name: str) -> torch.Tensor:
        with torch.inference_mode():
            return decoders[name].decode(latents.to(DTYPES[name])).sample.float().clamp(0, 1)

    times = measure({name: (lambda n=name: decode(n)) for name in DTYPES}, options)
    error = (decode("bfloat16") - decode("float32")).abs()
    return {"latent_side": side, "pixels_side": side * 4,
            **{name: {"median_s": v["median_s"], "runs_s": v["runs_s"]} for name, v in times.items()},
            "ratio": times["float32"]["median_s"] / times["bfloat16"]["median_s"],
            "max_abs_pixel_error_bf16": float(error.max()), "mean_abs_pixel_error_bf16": float(error.mean()),
            "max_8bit_levels": float((error * 255).round().max())}


def _copy(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).to(dtype)


def run(options: BenchOptions) -> dict[str, Any]:
    """Bandwidth, chat and image figures per dtype on the CPU (``--size real``: real shapes)."""
    from backends.runtime.cpu_dtype import read_cpu_features

    real = options.size == "real"
    features = read_cpu_features()
    bandwidth = copy_bandwidth(GIB if real else 64 * 2**20, 7)
    chat_result = chat(options, real)
    for name in DTYPES:
        entry = chat_result[name]
        entry["ceiling_tokens_per_s"] = bandwidth["gb_per_s"] * 1e9 / entry["weight_bytes_per_token"]
        decode = entry["decode_tokens_per_s"]
        entry["fraction_of_ceiling"] = None if decode is None else decode / entry["ceiling_tokens_per_s"]
    return {"scenario": "cpu_dtype", "size": options.size, "device": device_name(torch.device("cpu")),
            "cpu": {"capability": features.capability, "avx512_bf16": features.avx512_bf16,
                    "amx": features.amx, "fast_bf16": features.fast_bf16},
            "bandwidth": bandwidth, "chat": chat_result,
            "cascade_layer": cascade_layer(options, REAL_LAYER if real else TINY_LAYER),
            "vqgan": vqgan_decode(options, 16 if real else 8),
            "runs": options.runs, "warmup": options.warmup}


def report(result: dict[str, Any]) -> str:
    """The printed tables for one result."""
    cpu, bw, chat_result = result["cpu"], result["bandwidth"], result["chat"]
    head = (f"cpu_dtype ({result['size']} shapes) on {result['device']}: capability {cpu['capability']}, "
            f"avx512_bf16 {cpu['avx512_bf16']}, amx {cpu['amx']}; copy bandwidth {bw['gb_per_s']:.1f} GB/s "
            f"(read + write, {bw['bytes'] / GIB:.2f} GiB, best of {bw['runs']}; median {bw['median_gb_per_s']:.1f})")
    rows = [["chat dtype", "tokens/s", "first token (s)", "decode tokens/s", "weights/token (GB)",
             "ceiling tokens/s", "of ceiling"]]
    for name in DTYPES:
        v = chat_result[name]
        decode = "n/a" if v["decode_tokens_per_s"] is None else f"{v['decode_tokens_per_s']:.2f}"
        share = "n/a" if v["fraction_of_ceiling"] is None else f"{v['fraction_of_ceiling']:.0%}"
        rows.append([name, f"{v['tokens_per_s']:.2f}", f"{v['first_token_s']:.2f}", decode,
                     f"{v['weight_bytes_per_token'] / 1e9:.2f}", f"{v['ceiling_tokens_per_s']:.2f}", share])
    layer, vq = result["cascade_layer"], result["vqgan"]
    image_rows = [["image part", "float32 (s)", "bfloat16 (s)", "speed-up bf16"],
                  [f"stage C layer, {layer['shape']['side']}^2 x {layer['shape']['channels']}",
                   f"{layer['float32']['median_s']:.3f}", f"{layer['bfloat16']['median_s']:.3f}",
                   f"{layer['ratio']:.2f}x"],
                  [f"stage A decode to {vq['pixels_side']}^2", f"{vq['float32']['median_s']:.3f}",
                   f"{vq['bfloat16']['median_s']:.3f}", f"{vq['ratio']:.2f}x"]]
    tail = (f"chat {chat_result['prompt_tokens']} prompt + {chat_result['new_tokens']} new tokens, "
            f"{chat_result['parameters'] / 1e6:.0f}M parameters; bf16/float32 end to end {chat_result['ratio']:.2f}x. "
            f"Stage A bf16 - float32: max {vq['max_abs_pixel_error_bf16']:.4f} "
            f"({vq['max_8bit_levels']:.0f} of 255 levels), mean {vq['mean_abs_pixel_error_bf16']:.5f}")
    return "\n".join([head, format_table(rows), format_table(image_rows), tail])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m bench.cpu_dtype``: real shapes on the CPU (``--quick``: shrunk ones)."""
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_dtype", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shrunk shapes, 1 run, no warm-up (smoke test)")
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per chat reply (at least 2)")
    parser.add_argument("--runs", type=int, default=1, help="timed runs per dtype; the median is reported")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed short replies (8 prompt + 2 new tokens) per dtype first")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch; 0 is torch's own choice")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the tiny tokenizer is built")
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    args = parser.parse_args(argv)
    if args.tokens < 2 or args.runs < 1 or args.warmup < 0 or args.threads < 0:
        parser.error("--tokens must be at least 2, --runs at least 1, --warmup and --threads 0 or more")
    import app

    if args.threads:
        torch.set_num_threads(args.threads)
    options = BenchOptions(device=torch.device("cpu"), size="tiny" if args.quick else "real",
                           runs=1 if args.quick else args.runs, warmup=0 if args.quick else args.warmup,
                           tokens=args.tokens, cache_dir=args.cache_dir or app.cache_dir(None))
    result = run(options)
    print(report(result), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
