"""Stable Audio Open under a small budget, and the working memory each stage asks the manager for.

The CPU device stands in for the GPU: the manager counts what it places against the budget
exactly as it would on CUDA (``MemoryManager`` with a ``FakeProbe``), so placements and
evictions are real even though no bytes move.
"""

from __future__ import annotations

import numpy as np
import torch

from backends.audio import memory
from backends.audio.backend import DENOISE, PROJECTION, TRANSFORMER, VAE, AudioBackend
from backends.audio.text import TEXT_ENCODER
from backends.runtime.loading import LoadContext
from backends.runtime.memory import RESERVE_FRACTION, MemoryManager
from backends.runtime.offload import module_bytes
from backends.runtime.probe import GB, FakeProbe
from backends.runtime.progress import no_progress
from tests.backends.audio.common import job, tiny_settings
from tests.backends.recording import Recording

COMPONENTS = (TEXT_ENCODER, PROJECTION, TRANSFORMER, VAE)


def one_at_a_time(ctx: LoadContext) -> int:
    """A budget that holds the VAE's decode (its weights and the whole window's working memory) and
    nothing beside it: less spare room than the smallest other component."""
    roomy = AudioBackend(tiny_settings(), MemoryManager(FakeProbe(device_total=16 * GB)), ctx)
    sizes = {}
    for name in COMPONENTS:
        with roomy.manager.use(name) as module:
            sizes[name] = module_bytes(module)
            if name == VAE:
                work = memory.vae_decode_bytes(module.config, 4, 256)
    spare = 4096
    assert spare < min(sizes.values())
    assert work > 10 * sum(sizes.values())  # the whole 47.55 s window is decoded: the decode is the largest need
    return int((sizes[VAE] + work) / (1 - RESERVE_FRACTION)) + spare


class Watch:
    """Records each component's placement whenever a denoising step is reported."""

    def __init__(self, manager: MemoryManager) -> None:
        self.manager = manager
        self.seen: list[dict[str, str]] = []

    def __call__(self, stage: str, step: int, total: int) -> None:
        assert stage == DENOISE
        self.seen.append({s.name: s.placement for s in self.manager.statuses()})


def test_a_budget_for_one_stage_at_a_time_completes_with_the_same_samples(audio_ctx: LoadContext,
                                                                          backend: AudioBackend) -> None:
    manager = MemoryManager(FakeProbe(device_total=16 * GB), device="cpu", budget_bytes=one_at_a_time(audio_ctx))
    tight = AudioBackend(tiny_settings(), manager, audio_ctx)
    watch = Watch(manager)
    result = tight.run("text_to_audio", job(seed=9), watch)
    assert len(watch.seen) == 4
    assert all(seen[TRANSFORMER] == "gpu" and seen[PROJECTION] == "gpu" for seen in watch.seen)
    # To decode, the manager took everything else off the device: to RAM, not dropped.
    assert {s.name: s.placement for s in manager.statuses()} == {
        TEXT_ENCODER: "cpu", PROJECTION: "cpu", TRANSFORMER: "cpu", VAE: "gpu"}
    assert all(manager.component(name).loads == 1 for name in COMPONENTS)
    second = tight.run("text_to_audio", job(seed=9), no_progress)  # and back again for the next job
    assert manager.component(TRANSFORMER).loads == 1 and np.array_equal(second.audio, result.audio)
    roomy = backend.run("text_to_audio", job(seed=9), no_progress)
    assert np.array_equal(result.audio, roomy.audio) and torch.equal(result.latents, roomy.latents)


def test_each_stage_borrows_only_its_components_with_their_estimates(audio_ctx: LoadContext) -> None:
    recording = Recording(MemoryManager(FakeProbe(device_total=16 * GB), device="cpu"))
    backend = AudioBackend(tiny_settings(), recording, audio_ctx)  # type: ignore[arg-type]
    backend.run("text_to_audio", job(), no_progress)
    order = [(event, name) for event, name, _ in recording.events]
    assert order == [("enter", TEXT_ENCODER), ("exit", TEXT_ENCODER),
                     ("enter", PROJECTION), ("enter", TRANSFORMER), ("exit", TRANSFORMER), ("exit", PROJECTION),
                     ("enter", VAE), ("exit", VAE)]
    needs = {name: need for event, name, need in recording.events if event == "enter"}
    with recording.inner.use(TRANSFORMER) as transformer, recording.inner.use(VAE) as vae:
        assert needs[TRANSFORMER] == memory.transformer_bytes(transformer.config, 4, True, 130)
        assert needs[VAE] == memory.vae_decode_bytes(vae.config, 4, 256)
    assert all(need > 0 for need in needs.values())


def test_the_estimates_grow_with_their_inputs_and_give_real_sized_figures() -> None:
    dit = {"num_attention_heads": 24, "attention_head_dim": 64, "sample_size": 1024, "cross_attention_dim": 768,
           "in_channels": 64}  # the released transformer/config.json
    vae = {"downsampling_ratios": [2, 4, 4, 8, 8], "decoder_channels": 128, "audio_channels": 2}
    unguided = memory.transformer_bytes(dit, 2, False, 130)
    assert memory.transformer_bytes(dit, 2, True, 130) > 1.9 * unguided
    assert memory.transformer_bytes(dit, 4, False, 130) > 1.9 * unguided  # float32
    assert 0.1 * GB < memory.transformer_bytes(dit, 2, True, 130) < 0.5 * GB
    assert memory.decode_samples(vae, 1024) == 2_097_152  # 47.55 s at 44.1 kHz
    assert 2.5 * GB < memory.vae_decode_bytes(vae, 2, 1024) < 3 * GB  # measured 4.5 x 128 channels x samples
    assert memory.vae_decode_bytes(vae, 2, 512) < 0.51 * memory.vae_decode_bytes(vae, 2, 1024)
    t5 = {"d_model": 768, "d_ff": 3072, "num_heads": 12}
    assert memory.t5_bytes(t5, 2, 128, 2) == 2 * memory.t5_bytes(t5, 2, 128, 1)
