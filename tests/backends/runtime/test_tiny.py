"""Tiny random-weight models: built deterministically, once, atomically, and loadable like hub repos."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from backends.families import TINY, load_context
from backends.runtime.errors import UnknownNameError
from backends.runtime.loading import LoadContext, Source, load_pretrained
from backends.runtime.tiny import MARKER, _publish

SUBFOLDERS = ("text_encoder", "tokenizer", "image_encoder", "feature_extractor", "prior", "decoder",
              "vqgan", "scheduler")
WEIGHT_FILES = {
    "text_encoder": "model.safetensors",
    "image_encoder": "model.safetensors",
    "prior": "diffusion_pytorch_model.safetensors",
    "decoder": "diffusion_pytorch_model.safetensors",
    "vqgan": "diffusion_pytorch_model.safetensors",
}


@pytest.fixture(scope="module")
def cascade_dir(tiny_cache: Path) -> Path:
    return TINY.ensure("cascade", tiny_cache)


@pytest.fixture(scope="module")
def ctx(tiny_cache: Path) -> LoadContext:
    return load_context(cache_dir=tiny_cache, offline=True)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cascade_has_every_component(cascade_dir: Path) -> None:
    assert cascade_dir == TINY.path("cascade", cascade_dir.parent.parent)
    assert (cascade_dir / MARKER).is_file()
    for subfolder in SUBFOLDERS:
        assert (cascade_dir / subfolder).is_dir(), subfolder
    for subfolder, name in WEIGHT_FILES.items():
        # Big enough that memory tests can tell components apart by size.
        assert (cascade_dir / subfolder / name).stat().st_size >= 200_000, subfolder


def test_second_call_reuses_the_build(cascade_dir: Path) -> None:
    weights = cascade_dir / "prior" / WEIGHT_FILES["prior"]
    before = (weights.stat().st_mtime_ns, (cascade_dir / MARKER).stat().st_mtime_ns)
    assert TINY.ensure("cascade", cascade_dir.parent.parent) == cascade_dir
    assert (weights.stat().st_mtime_ns, (cascade_dir / MARKER).stat().st_mtime_ns) == before


def test_concurrent_builds_are_complete_and_deterministic(cascade_dir: Path, tmp_path: Path) -> None:
    """Three threads race on a fresh cache: one finished build, byte-identical to the first one."""
    results: list[Path] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(TINY.ensure("cascade", tmp_path))
        except BaseException as error:  # reported below; a thread cannot raise into the test
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1 and (results[0] / MARKER).is_file()
    # No staging folders are left behind.
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [results[0].name]
    first, second = _files(cascade_dir), _files(results[0])
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_losing_the_rename_race_keeps_the_winner(tmp_path: Path) -> None:
    target = tmp_path / "cascade-v2"
    target.mkdir()
    (target / MARKER).write_text("winner")
    staging = tmp_path / ".staging"
    staging.mkdir()
    (staging / MARKER).write_text("loser")
    _publish(staging, target)
    assert (target / MARKER).read_text() == "winner"


def test_an_unfinished_folder_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "cascade-v2"
    target.mkdir()
    (target / "half-written.bin").write_text("junk")
    staging = tmp_path / ".staging"
    staging.mkdir()
    (staging / MARKER).write_text("new")
    _publish(staging, target)
    assert (target / MARKER).read_text() == "new"
    assert not (target / "half-written.bin").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cascade-v2"]


def test_unknown_family_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="cascade"):
        TINY.ensure("nope", tmp_path)
    assert "cascade" in TINY.names()


def test_components_load_through_load_pretrained(ctx: LoadContext) -> None:
    from diffusers import DDPMWuerstchenScheduler, StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    def load(cls: type, subfolder: str, **kwargs: object) -> object:
        return load_pretrained(cls, Source("tiny:cascade", subfolder), ctx, **kwargs)

    tokenizer = load(CLIPTokenizer, "tokenizer")
    text_encoder = load(CLIPTextModelWithProjection, "text_encoder", dtype=torch.float32)
    image_encoder = load(CLIPVisionModelWithProjection, "image_encoder", dtype=torch.float32)
    processor = load(CLIPImageProcessor, "feature_extractor")
    prior = load(StableCascadeUNet, "prior", dtype=torch.float32)
    decoder = load(StableCascadeUNet, "decoder", dtype=torch.float32)
    vqgan = load(PaellaVQModel, "vqgan", dtype=torch.float32)
    scheduler = load(DDPMWuerstchenScheduler, "scheduler")
    assert isinstance(scheduler, DDPMWuerstchenScheduler)

    # The tokenizer handles any text: no unknown tokens, CLIP's specials and length.
    ids = tokenizer("A Photo of a cat, naïve café 東京 #42!").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert tokenizer.model_max_length == 77
    assert text_encoder.config.eos_token_id == tokenizer.eos_token_id

    # The widths line up the way the real checkpoints do.
    assert prior.config.in_channels == prior.config.out_channels == 16
    assert prior.config.clip_text_in_channels == text_encoder.config.hidden_size
    assert prior.config.clip_text_pooled_in_channels == text_encoder.config.projection_dim
    assert prior.config.clip_image_in_channels == image_encoder.config.projection_dim
    assert decoder.config.clip_text_pooled_in_channels == text_encoder.config.projection_dim
    assert decoder.config.effnet_in_channels == prior.config.out_channels
    assert decoder.config.in_channels == vqgan.config.latent_channels == 4
    assert decoder.config.patch_size == 2 and decoder.config.pixel_mapper_in_channels == 3

    # The image branch runs end to end (used later by image variation).
    pixels = processor(Image.new("RGB", (300, 200), (200, 30, 30)), return_tensors="pt").pixel_values
    with torch.inference_mode():
        embeds = image_encoder(pixels).image_embeds
    assert embeds.shape == (1, prior.config.clip_image_in_channels)
