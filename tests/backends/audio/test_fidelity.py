"""Our staged path against the stock ``StableAudioPipeline``, on the same tiny modules and seed.

Each test runs a job through ``AudioBackend`` (the manager lends T5, then the DiT with the
projection model, then the VAE) and the same job through ``StableAudioPipeline`` called directly,
with a CPU generator seeded alike and the VAE loaded afresh with its weight norm, and asks for
bit-identical latents and samples, in float32 and bfloat16.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backends.audio.backend import PROJECTION, AudioBackend
from backends.audio.text import encode
from backends.runtime.progress import no_progress
from tests.backends.audio.common import job, stock_pipeline, stock_run


def pick(request: pytest.FixtureRequest, dtype: str) -> AudioBackend:
    return request.getfixturevalue("backend" if dtype == "float32" else "bf16_backend")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_latents_and_samples_match_the_stock_pipeline(dtype: str, request: pytest.FixtureRequest) -> None:
    backend = pick(request, dtype)
    request_ = job(seed=11)
    ours = backend.run("text_to_audio", request_, no_progress)
    pipe = stock_pipeline(backend)
    audios = stock_run(pipe, request_, "pt")  # decoded by the stock VAE, cut to int(1.5 * 44100)
    assert ours.latents.dtype == backend.dtype and ours.latents.shape == (1, 8, 256)
    assert torch.equal(ours.latents, stock_run(pipe, request_, "latent"))
    assert audios.shape == (1, 2, 66150) and ours.audio.shape == (2, 66150) and ours.audio.dtype == np.float32
    # Inside [-1, 1] already (the tiny VAE's gain), so the clip changes nothing and the samples are the stock's.
    assert float(audios.float().abs().max()) < 1
    assert np.array_equal(ours.audio, audios[0].float().numpy())
    assert ours.info["seed"] == 11 and ours.info["dtype"] == dtype


@pytest.mark.parametrize(("negative", "guidance"), [("", 7.0), ("Low quality.", 1.0)],
                         ids=["guided-without-negative", "unguided"])
def test_without_a_negative_prompt_or_guidance_it_still_matches(backend: AudioBackend, negative: str,
                                                                guidance: float) -> None:
    """No negative prompt: the pipeline's zeros stand in for it; no guidance: one row, no negative encoded."""
    request_ = job(negative_prompt=negative, guidance=guidance, seed=12)
    ours = backend.run("text_to_audio", request_, no_progress)
    expected = stock_run(stock_pipeline(backend), request_, "latent")
    assert torch.equal(ours.latents, expected)
    assert ours.info["guided"] is (guidance > 1)
    guided = backend.run("text_to_audio", job(seed=12), no_progress)
    assert not torch.equal(ours.latents, guided.latents)  # the negative prompt (or guidance) matters


@pytest.mark.parametrize("negative", ["Low quality.", None])
def test_the_t5_stage_then_the_pipeline_equals_encode_prompt(backend: AudioBackend, negative: str | None) -> None:
    """T5's states from ``text.encode``, given to ``encode_prompt`` as the pipeline's ``__call__`` gives them,
    equal ``encode_prompt`` run on the text itself: the same projected, masked conditioning bit for bit."""
    parts = backend.parts()
    states = encode(backend.manager, parts.tokenizer, "a dog barking", negative, {})
    pipe = stock_pipeline(backend)
    arguments = states.pipeline_arguments()
    with torch.no_grad():
        ours = pipe.encode_prompt(None, backend.manager.device, True, None, arguments["prompt_embeds"],
                                  arguments.get("negative_prompt_embeds"), arguments["attention_mask"],
                                  arguments.get("negative_attention_mask"))
        theirs = pipe.encode_prompt("a dog barking", backend.manager.device, True, negative)
    assert ours.shape == theirs.shape == (2 if negative else 1, 128, 24)
    assert torch.equal(ours, theirs)
    with backend.manager.use(PROJECTION) as projection:
        assert pipe.projection_model is projection  # the stock pipeline is made of the backend's modules
