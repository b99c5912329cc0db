"""Audio: our ``registry.run`` text-to-audio against the stock ``StableAudioPipeline`` (Stable Audio Open).

Ours is the Audio backend's staged job (T5 lent alone, then the DiT with the projection model,
then the VAE: ``backends/audio/backend.py``); stock is diffusers' ``StableAudioPipeline`` built
over the very modules our backend loaded, as the fidelity test builds it
(``tests/backends/audio/common.py::stock_pipeline``), and called directly as the model card calls
it, with a CPU generator of the same seed. Both run with every component resident (held in use,
no budget), so the ratio is our overhead; goal ours/stock <= 1.02. The stock pipeline's VAE is the
manager's module, whose weight norm the backend folded at load (``backends.audio.pipes``): the
fidelity test holds that VAE to the unfolded one bit for bit, and here both paths decode with the
same weights, so the decode costs alike. Stock's timed call includes what the model card does next
(``.float().cpu().numpy()``), as ours returns float32 samples on the CPU. A row also says whether
the latents and the samples are identical (ours clips the samples to [-1, 1], so stock's are
compared clipped) and whether the latents are finite (random real-size weights could overflow,
and NaN never equals NaN).

Requests (prompt: the model card's; negative prompt "Low quality.", guidance 7, seed 7):

- ``--size tiny`` (any device): a 2 s clip at the tiny preset's steps (4), float32.
- ``--size real --device cuda``: the released architectures with random weights, no download
  (``DIT``, ``OOBLECK_VAE``, ``T5_BASE``, ``PROJECTION_MODEL``: sources in ``docs/real_configs.md``;
  ``tests/bench/test_audio_bench.py`` holds them to ``backends/audio/spec.py``'s ``params_m``),
  in bfloat16 like the other real-size scenarios (float16, the preset's, could overflow with random
  weights), a 10 s clip at 20 steps.
- ``--size real --device cpu`` (``--scenarios audio``): one 1 s request at 1 step in float32,
  ours only; the row gives its seconds, the seconds spent building the random weights before it,
  and the process's peak RSS. Stock is left out for time, not memory: the weights are 5.3 GB in
  float32 and the decode's activations a few GB, so both would fit in 20 GB, but the DiT always
  denoises, and the VAE always decodes, the whole 47.55 s window whatever the clip's length. One
  guided step is 4.5 TFLOP of DiT and the decode 5.2 TFLOP of convolutions (counted with
  ``torch.utils.flop_counter`` on the meta device), several minutes on a 2-core CPU; stock would
  double that and say nothing a tiny run does not.

At real size the tokenizer and scheduler are the tiny preset's (T5's special ids and the released
scheduler config; ``backends/audio/tiny.py``), and the backend reads the window and the hop length
from a folder holding only the real ``transformer/config.json`` and ``vae/config.json``
(``audio_config_folder``), so it cuts and limits clips as the released model does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench.common import (
    CPU_MEMORY_NOTE,
    BenchOptions,
    device_name,
    format_table,
    measure,
    megabytes,
    peak_bytes,
    process_peak_rss_bytes,
    reset_peak,
    timed,
)
from bench.models import built, make_studio, no_progress

logger = logging.getLogger(__name__)

GOAL = 1.02
#: The model card's prompt and negative prompt (stabilityai/stable-audio-open-1.0, diffusers example).
PROMPT, NEGATIVE = "The sound of a hammer hitting a wooden surface.", "Low quality."
GUIDANCE, SEED = 7.0, 7
#: (seconds, steps): tiny (steps from the preset), CUDA real size, CPU real size.
TINY_SECONDS = 2.0
REAL_SECONDS, REAL_STEPS = 10.0, 20
CPU_REAL_SECONDS, CPU_REAL_STEPS = 1.0, 1

#: stabilityai/stable-audio-open-1.0 ``transformer/config.json`` (``StableAudioDiTModel``, 1,056.9M):
#: width 1536 = 24 heads x 64, 12 key/value heads (T5's 768 / 64), a window of 1024 latent frames.
DIT: dict[str, Any] = dict(
    sample_size=1024, in_channels=64, out_channels=64, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    num_key_value_attention_heads=12, cross_attention_dim=768, time_proj_dim=256, global_states_input_dim=1536,
    cross_attention_input_dim=768)
#: The same repo's ``vae/config.json`` (``AutoencoderOobleck``, 156.1M with its weight norm): stereo
#: 44.1 kHz, 5 blocks of 2 x 4 x 4 x 8 x 8 = 2048 samples per latent frame, 64 latent channels.
OOBLECK_VAE: dict[str, Any] = dict(
    encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 8, 8], channel_multiples=[1, 2, 4, 8, 16],
    decoder_channels=128, decoder_input_channels=64, audio_channels=2, sampling_rate=44100)
#: ``text_encoder/config.json``: the T5-base encoder (109.6M), ReLU, relative attention.
T5_BASE: dict[str, Any] = dict(
    vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="relu",
    layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
#: ``projection_model/config.json`` (``StableAudioProjectionModel``, 0.4M): T5's 768 to the
#: conditioning's 768 (the identity), seconds in 0-512.
PROJECTION_MODEL: dict[str, Any] = dict(text_encoder_dim=768, conditioning_dim=768, min_value=0, max_value=512)


def audio_config_folder(cache_dir: Path) -> Path:
    """A folder laid out like the repo with only ``transformer/`` and ``vae/``'s ``config.json``.

    Written once from meta-device models, so the files are exactly what diffusers saves.
    """
    from diffusers import AutoencoderOobleck, StableAudioDiTModel

    folder = Path(cache_dir) / "bench-real" / "stable-audio-open-1.0"
    for subfolder, factory in (("transformer", lambda: StableAudioDiTModel(**DIT)),
                               ("vae", lambda: AutoencoderOobleck(**OOBLECK_VAE))):
        if not (folder / subfolder / "config.json").is_file():
            with torch.device("meta"):
                factory().save_config(folder / subfolder)
    return folder


def audio_builders(device: torch.device, dtype: torch.dtype) -> dict[str, Callable[[], torch.nn.Module]]:
    """Manager name -> builder of the real-size Stable Audio Open modules (random weights).

    The VAE's weight norm is folded as the backend's own loader folds it (``pipes.fold_weight_norm``).
    """
    from diffusers import AutoencoderOobleck, StableAudioDiTModel, StableAudioProjectionModel
    from transformers import T5Config, T5EncoderModel

    from backends.audio.backend import PROJECTION, TRANSFORMER, VAE
    from backends.audio.pipes import fold_weight_norm
    from backends.audio.text import TEXT_ENCODER

    return {
        TEXT_ENCODER: lambda: built(lambda: T5EncoderModel(T5Config(**T5_BASE)), device, dtype),
        PROJECTION: lambda: built(lambda: StableAudioProjectionModel(**PROJECTION_MODEL), device, dtype),
        TRANSFORMER: lambda: built(lambda: StableAudioDiTModel(**DIT), device, dtype),
        VAE: lambda: built(lambda: fold_weight_norm(AutoencoderOobleck(**OOBLECK_VAE)), device, dtype),
    }


def audio_studio(options: BenchOptions, dtype: torch.dtype) -> Any:
    """``make_studio``'s Studio; for ``--size real`` with the real-size audio modules of ``dtype``.

    Before the audio backend is built: its preset section points at ``audio_config_folder`` for the
    configs it reads, and the manager holds the builders (``register`` is idempotent, so the
    backend's own loaders are then ignored).
    """
    from backends.runtime.loading import Source

    studio = make_studio(options, dtype=dtype)
    if options.size != "real":
        return studio
    preset = studio.registry.preset
    folder = str(audio_config_folder(options.cache_dir))
    preset.audio = dataclasses.replace(preset.audio, dtype=str(dtype).split(".")[-1],
                                       transformer=Source(folder, "transformer"), vae=Source(folder, "vae"))
    for name, build in audio_builders(options.device, dtype).items():
        studio.manager.register(name, build)
    return studio


def audio_request(options: BenchOptions, registry: Any) -> Any:
    """The Audio tab's request at this size (the module docstring)."""
    from backends.audio.requests import AudioRequest

    if options.size != "real":
        seconds, steps = TINY_SECONDS, registry.settings("audio").defaults.steps
    elif options.device.type == "cpu":
        seconds, steps = CPU_REAL_SECONDS, CPU_REAL_STEPS
    else:
        seconds, steps = REAL_SECONDS, REAL_STEPS
    return AudioRequest.build(PROMPT, NEGATIVE, seconds, steps, GUIDANCE, SEED)


class StockAudio:
    """diffusers' ``StableAudioPipeline`` over the modules the Audio backend loaded."""

    def __init__(self, backend: Any) -> None:
        from diffusers import CosineDPMSolverMultistepScheduler, StableAudioPipeline

        from backends.audio.backend import PROJECTION, TRANSFORMER, VAE
        from backends.audio.text import TEXT_ENCODER

        parts = backend.parts()
        found = {name: backend.manager.component(name).home.module for name in backend.component_names()}
        self.pipe = StableAudioPipeline(
            vae=found[VAE], text_encoder=found[TEXT_ENCODER], projection_model=found[PROJECTION],
            tokenizer=parts.tokenizer, transformer=found[TRANSFORMER],
            scheduler=CosineDPMSolverMultistepScheduler.from_config(parts.scheduler.config))
        self.pipe.set_progress_bar_config(disable=True)

    def run(self, request: Any, keep_latents: bool = False) -> tuple[torch.Tensor | None, np.ndarray]:
        """One clip as the model card makes it: the last step's latents (``keep_latents``) and the
        float32 samples (channels, samples) on the CPU."""
        kept: list[torch.Tensor] = []
        extra: dict[str, Any] = {}
        if keep_latents:  # the check run only: the clone is no part of the timed call
            extra = {"callback": lambda step, timestep, latents: kept.append(latents.clone()), "callback_steps": 1}
        audios = self.pipe(request.prompt, negative_prompt=request.negative_prompt or None,
                           audio_end_in_s=request.seconds, num_inference_steps=request.steps,
                           guidance_scale=request.guidance, generator=torch.Generator("cpu").manual_seed(request.seed),
                           output_type="pt", **extra).audios
        return (kept[-1].cpu() if kept else None), audios[0].float().cpu().numpy()


def run(options: BenchOptions) -> dict[str, Any]:
    """Ours against stock (CPU real size: ours only); the JSON keys are in ``bench/README.md``."""
    cpu_real = options.size == "real" and options.device.type == "cpu"
    studio = audio_studio(options, torch.float32 if options.device.type == "cpu" else torch.bfloat16)
    registry, manager = studio.registry, studio.manager
    request = audio_request(options, registry)
    backend = registry.backend("audio")
    names = backend.component_names()
    started = time.perf_counter()
    for name in names:  # read (tiny) or built (real) and placed before anything is timed
        with manager.use(name):
            pass
    build_s = time.perf_counter() - started
    ours: Callable[[], Any] = lambda: registry.run("text_to_audio", request, no_progress)  # noqa: E731
    stock_latents = stock_audio = None
    if cpu_real:
        reset_peak(options.device)
        seconds, first = timed(ours, options.device)
        figures: dict[str, Any] = {"ours": {"median_s": seconds, "runs_s": [round(seconds, 4)],
                                            "peak_memory_bytes": peak_bytes(options.device)}, "stock": None}
    else:
        with contextlib.ExitStack() as held:
            for name in names:  # resident for the whole comparison, whatever the stock path does
                held.enter_context(manager.use(name))
            first = ours()
            stock = StockAudio(backend)
            stock_latents, stock_audio = stock.run(request, keep_latents=True)
            figures = measure({"ours": ours, "stock": lambda: stock.run(request)}, options)
    loaded = {name: manager.component(name).home.module for name in names}
    result = {
        "scenario": "audio", "family": "audio", "task": "text_to_audio", "device": device_name(options.device),
        "size": options.size, "runs": 1 if cpu_real else options.runs, "warmup": 0 if cpu_real else options.warmup,
        "goal_ratio_max": GOAL,
        "dtype": registry.settings("audio").dtype,
        "parameters_m": {name.split(".", 1)[1]: round(sum(p.numel() for p in m.parameters()) / 1e6, 1)
                         for name, m in loaded.items()},
        "request": {key: getattr(request, key) for key in ("seconds", "steps", "guidance", "negative_prompt", "seed")},
        "build_s": round(build_s, 2),
        **figures,
        "ratio": None if cpu_real else figures["ours"]["median_s"] / figures["stock"]["median_s"],
        "same_latents": None if stock_latents is None else bool(torch.equal(first.latents, stock_latents)),
        "same_samples": None if stock_audio is None else (
            first.audio.shape == stock_audio.shape and bool(np.array_equal(first.audio, np.clip(stock_audio, -1, 1)))),
        "finite_latents": bool(torch.isfinite(first.latents).all()),
        "latent_shape": list(first.latents.shape), "samples": int(first.audio.shape[1]),
        "sample_rate": first.sample_rate,
        "process_peak_rss_bytes": process_peak_rss_bytes(),
        **({"stock_note": "stock is not run at real size on the CPU (bench/audio.py says why)"} if cpu_real else {}),
        **({"memory_note": CPU_MEMORY_NOTE} if options.device.type == "cpu" else {}),
    }
    manager.unload("all")
    return result


def report(result: dict[str, Any]) -> str:
    """The printed table."""
    yes = {True: "yes", False: "NO", None: "n/a"}
    stock = result["stock"]
    r = result["request"]
    rows = [["model", "clip", "ours (s)", "stock (s)", "ours/stock", "peak ours (MB)", "peak stock (MB)",
             "same latents", "same samples"],
            [f"stable audio open ({result['size']}, {result['dtype']})", f"{r['seconds']:g} s, {r['steps']} steps",
             f"{result['ours']['median_s']:.3f}", "n/a" if stock is None else f"{stock['median_s']:.3f}",
             "n/a" if result["ratio"] is None else f"{result['ratio']:.3f}",
             megabytes(result["ours"]["peak_memory_bytes"]),
             "n/a" if stock is None else megabytes(stock["peak_memory_bytes"]),
             yes[result["same_latents"]], yes[result["same_samples"]]]]
    timing = "one request, ours only" if stock is None else f"median of {result['runs']} runs"
    head = (f"audio: text-to-audio, all resident, on {result['device']}; {timing} "
            f"(goal ours/stock <= {result['goal_ratio_max']})")
    tail = (f"weights read or built in {result['build_s']:.1f} s; process peak RSS "
            f"{megabytes(result['process_peak_rss_bytes'])} MB; latents finite: {yes[result['finite_latents']]}")
    lines = [head, format_table(rows), tail]
    if result.get("stock_note"):
        lines.append(result["stock_note"])
    return "\n".join(lines)
