"""PNG Info's reader: our own files, AUTOMATIC1111's layout, and files it must refuse, PIL only."""

from __future__ import annotations

import json
import pickle
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from backends.runtime.errors import InputError
from backends.runtime.outputs import OutputWriter
from backends.runtime.png_info import FIELDS, parameter_pairs, parse_a1111, read_png_info

A1111 = ("masterpiece, a castle on a hill\ngolden hour\nNegative prompt: fog, blur\nlow quality\n"
         "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 4242, Size: 512x768, "
         "Model hash: 0123abcd, Model: dreamy_v2, Lora hashes: \"a: 1, b: 2\", Version: v1.10.1")


def save_png(path: Path, *chunks: tuple[str, str], zipped: bool = False, size: tuple[int, int] = (16, 12)) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks:
        info.add_text(key, value, zip=zipped)
    Image.new("RGB", size, "teal").save(path, pnginfo=info)
    return path


def test_our_own_results_read_back_with_their_types(tmp_path: Path) -> None:
    params = dict(prompt="a fox", negative_prompt="blur", width=256, height=384, prior_steps=3, decoder_steps=2,
                  prior_guidance=4.0, decoder_guidance=1.1, num_images=2, seed=99, task="text_to_image",
                  timings={"total": 1.5}, stage_c_shape=[1, 16, 9, 6])
    (path,) = OutputWriter(tmp_path).save_images([Image.new("RGB", (8, 8))], params)
    read = read_png_info(path)
    assert read["source"] == "cascade-studio"
    assert {field: read[field] for field in FIELDS} == {field: params[field] for field in FIELDS}
    assert read["other"] == {"task": "text_to_image", "timings": {"total": 1.5}, "stage_c_shape": [1, 16, 9, 6],
                             "image_index": 0}
    assert read["raw"].startswith("a fox\nNegative prompt: blur\n") and "Seed: 99" in read["raw"]


def test_an_a1111_file_maps_to_the_image_tabs_fields_and_keeps_the_rest(tmp_path: Path) -> None:
    read = read_png_info(save_png(tmp_path / "a1111.png", ("parameters", A1111)))
    assert read == {
        "source": "a1111",
        "prompt": "masterpiece, a castle on a hill\ngolden hour",
        "negative_prompt": "fog, blur\nlow quality",
        "prior_steps": 30, "prior_guidance": 6.5, "seed": 4242, "width": 512, "height": 768,
        "other": {"Sampler": "DPM++ 2M", "Schedule type": "Karras", "Model hash": "0123abcd", "Model": "dreamy_v2",
                  "Lora hashes": "a: 1, b: 2", "Version": "v1.10.1"},
        "raw": A1111,
    }


def test_a1111_layout_edge_cases() -> None:
    # No negative prompt line: A1111's way of writing an empty one.
    assert parse_a1111("a cat\nSteps: 20, Seed: 1, Size: 512x512")["negative_prompt"] == ""
    # A last line with fewer than three pairs is prompt text, as A1111 reads it.
    only = parse_a1111("a cat\nstyle: watercolor")
    assert only["prompt"] == "a cat\nstyle: watercolor" and only["other"] == {}
    # Our own parameters text (JSON chunk stripped) maps by its own names.
    ours = parse_a1111("a fox\nWidth: 256, Height: 384, Prior steps: 3, Decoder steps: 2, Prior guidance: 4.0, "
                       "Decoder guidance: 1.1, Num images: 1, Seed: 9, Decoder seed: 10")
    assert {k: ours[k] for k in FIELDS if k in ours} == dict(
        prompt="a fox", negative_prompt="", width=256, height=384, prior_steps=3, decoder_steps=2,
        prior_guidance=4.0, decoder_guidance=1.1, num_images=1, seed=9)
    assert ours["other"] == {"Decoder seed": "10"}
    # Values that are not numbers stay under "other", by their own name; nothing is guessed.
    odd = parse_a1111("x\nSteps: many, CFG scale: inf, Seed: 1e3, Size: big")
    assert not {"prior_steps", "prior_guidance", "seed", "width"} & set(odd)
    assert odd["other"] == {"Steps": "many", "CFG scale": "inf", "Seed": "1e3", "Size": "big"}


def test_parameter_pairs_quotes_and_stray_text() -> None:
    assert parameter_pairs('Steps: 20, Wildcards: "a, b: \\"c\\"", junk, Seed: 5') == [
        ("Steps", "20"), ("Wildcards", 'a, b: "c"'), ("Seed", "5")]
    assert parameter_pairs('Note: "never closed, Seed: 5') == [("Note", '"never closed'), ("Seed", "5")]
    assert parameter_pairs("") == [] and parameter_pairs(",,,:") == []


@pytest.mark.parametrize("line", ["x" * 10**6, "," * 10**6, "a," * 500_000 + "k: 1", 'k: "' * 300_000,
                                  ":" * 10**6, "k: v, " * 200_000])
def test_a_megabyte_parameter_line_parses_in_linear_time(line: str) -> None:
    """A backtracking regex (A1111's own) takes minutes on such lines; the scan must not."""
    started = time.perf_counter()
    parameter_pairs(line)
    assert time.perf_counter() - started < 2.0


def test_text_chunks_of_every_kind_and_utf8_in_latin1(tmp_path: Path) -> None:
    zipped = read_png_info(save_png(tmp_path / "z.png", ("parameters", A1111), zipped=True))  # zTXt
    assert zipped["seed"] == 4242
    text = "ein Bär 🐻\nSteps: 2, Seed: 3, Size: 256x256"
    unicode = read_png_info(save_png(tmp_path / "u.png", ("parameters", text)))
    assert unicode["prompt"] == "ein Bär 🐻"  # iTXt: PIL writes it for text Latin-1 cannot hold
    # Some tools put UTF-8 bytes into tEXt, which PNG defines as Latin-1: undone.
    mojibake = "café".encode("utf-8").decode("latin-1")
    assert read_png_info(save_png(tmp_path / "m.png", ("parameters", f"{mojibake}\nSteps: 2, Seed: 3, Size: 1x1")))[
        "prompt"] == "café"


def test_json_that_our_chunk_may_carry_is_made_safe(tmp_path: Path) -> None:
    evil = ('{"prompt": "a \\ud800 b", "seed": NaN, "width": true, "height": 256.5, "deep": '
            + "[" * 200 + "]" * 200 + "}")
    read = read_png_info(save_png(tmp_path / "e.png", ("studio", evil)))
    assert read["prompt"] == "a \ufffd b"  # a lone surrogate cannot be sent as JSON
    assert {"seed", "width", "height"}.isdisjoint(read)  # NaN, a bool, a fraction: no value for a field
    assert read["other"]["seed"] == "NaN" and read["other"]["width"] is True
    depth, node = 0, read["other"]["deep"]
    while isinstance(node, list):
        depth, node = depth + 1, node[0]
    assert depth < 40 and "nested more than" in node
    json.dumps(read, allow_nan=False)
    whole = read_png_info(save_png(tmp_path / "w.png", ("studio", '{"width": 512.0, "prior_guidance": 4}')))
    assert whole["width"] == 512 and isinstance(whole["width"], int) and whole["prior_guidance"] == 4


def test_a_broken_json_chunk_falls_back_to_the_text(tmp_path: Path) -> None:
    read = read_png_info(save_png(tmp_path / "b.png", ("studio", "{broken"), ("parameters", A1111)))
    assert read["source"] == "a1111" and read["seed"] == 4242


def test_text_after_the_pixels_is_found(tmp_path: Path) -> None:
    path = save_png(tmp_path / "plain.png")
    data = path.read_bytes()
    body = b"parameters\0" + b"a late cat\nSteps: 5, Seed: 6, Size: 256x256"
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    iend = data.rindex(b"IEND") - 4
    path.write_bytes(data[:iend] + chunk + data[iend:])
    assert read_png_info(path)["prompt"] == "a late cat"


def refused(path: Path, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern) as error:
        read_png_info(path)
    assert error.value.field == "image"


def test_files_it_cannot_read_are_refused_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "text.png").write_text("hello")
    refused(tmp_path / "text.png", r"^image: text\.png is not a PNG file")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    refused(tmp_path / "photo.jpg", r"photo\.jpg is not a PNG file")
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 20)
    refused(tmp_path / "garbage.png", r"could not read garbage\.png as a PNG")
    refused(tmp_path / "missing.png", r"could not read missing\.png")
    refused(save_png(tmp_path / "plain.png", ("Software", "GIMP")),
            r"plain\.png carries no generation parameters.*its text chunks: Software")
    refused(save_png(tmp_path / "bad-json.png", ("studio", "[1, 2]")), r"its 'studio' chunk is not a JSON object")
    refused(save_png(tmp_path / "blank.png", ("parameters", " \n ")), r"carries no generation parameters")


def test_a_zip_bomb_text_chunk_is_refused(tmp_path: Path) -> None:
    """PIL stops at MAX_TEXT_CHUNK (1 MB unpacked): a tiny zTXt that unpacks to gigabytes is refused."""
    path = save_png(tmp_path / "bomb.png", ("parameters", "x" * (4 * 2**20)), zipped=True)
    assert path.stat().st_size < 100_000
    refused(path, r"could not read bomb\.png as a PNG")


def test_a_pickle_in_a_chunk_is_never_unpickled(tmp_path: Path) -> None:
    """A chunk is text to be read, never code: a pickle that would run a command is just bytes."""
    canary = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (canary,))

    blob = pickle.dumps(Payload()).decode("latin-1")
    read = read_png_info(save_png(tmp_path / "p.png", ("studio", blob), ("parameters", blob + "\nSteps: 1, Seed: 2, "
                                                                          "Size: 256x256")))
    assert read["seed"] == 2 and not canary.exists()
