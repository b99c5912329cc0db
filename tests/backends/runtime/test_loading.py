"""Loading: a local folder with pickle weights only is refused before any library opens it."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from diffusers.models import StableCascadeUNet

from backends.families import load_context
from backends.runtime.errors import ModelUnavailable
from backends.runtime.loading import Source, load_pretrained, refuse_pickle_only, resolve_file
from tests.bait import Plant


def test_the_bait_is_live(tmp_path: Path) -> None:
    """The planted pickle really runs code when unpickled, so its absence elsewhere means something."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Plant(marker)))
    assert marker.exists()


def test_a_pickle_only_folder_is_refused_by_name(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = tmp_path / "repo" / "prior"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    torch.save(Plant(marker), folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelUnavailable, match=rf"the folder {folder} holds only pickle weights "
                                               r"\(diffusion_pytorch_model\.bin\).*safetensors only"):
        load_pretrained(StableCascadeUNet, Source(str(tmp_path / "repo"), "prior"), load_context(tmp_path))
    assert not marker.exists()


def test_a_single_checkpoint_as_ckpt_is_refused_by_name(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "sv3d").mkdir()
    (tmp_path / "sv3d" / "sv3d_u.ckpt").write_bytes(pickle.dumps(Plant(marker)))
    with pytest.raises(ModelUnavailable, match=r"sv3d_u\.ckpt.*safetensors only"):
        resolve_file(Source(str(tmp_path / "sv3d")), "sv3d_u.safetensors", load_context(tmp_path))
    assert not marker.exists()


def test_safetensors_beside_pickles_pass_and_weightless_folders_pass(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "pytorch_model.bin").write_bytes(b"")
    (mixed / "model.safetensors").write_bytes(b"")
    refuse_pickle_only(mixed, "mixed")  # the libraries pick the safetensors
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "vocab.json").write_text("{}")
    refuse_pickle_only(tokenizer, "tokenizer")
    refuse_pickle_only(tmp_path / "absent", "absent")  # not a local folder: a hub id


def test_file_on_disk_never_downloads_or_builds(tmp_path: Path, tiny_cache: Path) -> None:
    """The UI asks it when a page opens: a file already here, else None, and nothing is started."""
    from backends.families import TINY
    from backends.runtime.loading import file_on_disk

    fresh = load_context(tmp_path / "cache", models_dir=tmp_path / "hub", offline=False)
    assert file_on_disk(Source("tiny:stablelm"), "config.json", fresh) is None
    assert not (tmp_path / "cache" / "tiny").exists()  # asking built nothing
    built = TINY.ensure("stablelm", tiny_cache)
    assert file_on_disk(Source("tiny:stablelm"), "config.json", load_context(tiny_cache)) == built / "config.json"
    assert file_on_disk(Source("tiny:nope"), "config.json", fresh) is None
    # A hub repo that is not cached: None at once, no network (the hub client would retry ~27 s).
    assert file_on_disk(Source("stabilityai/stablelm-2-zephyr-1_6b"), "config.json", fresh) is None
    local = tmp_path / "local" / "model"
    local.mkdir(parents=True)
    (local / "config.json").write_text("{}")
    assert file_on_disk(Source(str(tmp_path / "local"), "model"), "config.json", fresh) == local / "config.json"
    assert file_on_disk(Source(str(tmp_path / "local"), "model"), "missing.json", fresh) is None
