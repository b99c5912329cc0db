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
