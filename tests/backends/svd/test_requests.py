"""Image-to-video request validation and picture fitting (no models involved)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backends.runtime.errors import InputError
from backends.svd.requests import MAX_INPUT_PIXELS, VideoRequest, fit_image, model_size

SIZE = dict(width=1024, height=576)


def build(image: Any, **changes: Any) -> VideoRequest:
    values = dict(num_frames=14, fps=6, motion_bucket_id=127, noise_aug_strength=0.02, steps=25,
                  decode_chunk_size=0, seed=7)
    values.update(changes)
    fit = values.pop("fit", "crop")
    return VideoRequest.build(image, *values.values(), fit=fit, **SIZE)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size but holds no pixels: enough for the size check."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pictures") / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_a_valid_request_is_fitted_to_the_model_size(photo: Path) -> None:
    request = build(str(photo))
    assert request.image.size == (1024, 576) and request.image.mode == "RGB"
    assert (request.num_frames, request.fps, request.motion_bucket_id, request.steps) == (14, 6, 127, 25)
    assert request.seed == 7 and request.source_size == (400, 300)
    assert request.as_dict()["notices"] == ["picture upscaled from 400x300 to 1024x576 (crop)"]
    assert build(str(photo), seed=-1).seed >= 0


@pytest.mark.parametrize(("field", "value", "message"), [
    ("num_frames", 0, "num_frames: must be between 1 and 50"),
    ("num_frames", 1000, "num_frames: must be between 1 and 50"),
    ("fps", 0, "fps: must be between 5 and 30"),
    ("motion_bucket_id", 300, "motion_bucket_id: must be between 1 and 255"),
    ("noise_aug_strength", 1.5, "noise_aug_strength: must be between 0 and 1"),
    ("steps", 0, "steps: must be between 1 and 100"),
    ("decode_chunk_size", 15, "decode_chunk_size: must be between 0 and 14"),
    ("seed", "x", "seed: expected a number"),
    ("fit", "stretch", "fit: must be one of crop, pad"),
])
def test_bad_numbers_name_the_field(photo: Path, field: str, value: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build(str(photo), **{field: value})


def test_bad_pictures_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="image: no image given"):
        build(None)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 100)
    with pytest.raises(InputError, match="image: could not read corrupt.png as an image"):
        build(str(corrupt))
    truncated = tmp_path / "truncated.jpg"
    Image.new("RGB", (300, 200), "red").save(tmp_path / "full.jpg")
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:400])
    with pytest.raises(InputError, match="image: "):
        build(str(truncated))
    Image.new("RGB", (48, 300)).save(tmp_path / "narrow.png")  # passes the loader's 32 px, not ours
    with pytest.raises(InputError, match="image: is 48x300; each side must be at least 64 pixels"):
        build(str(tmp_path / "narrow.png"))
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(InputError, match="image: is 1×1 pixels; each side must be at least"):
        build(str(tmp_path / "dot.png"))
    with pytest.raises(InputError, match="image: could not read missing.png"):
        build(str(tmp_path / "missing.png"))


def test_a_huge_picture_is_scaled_down_and_one_beyond_the_limit_refused(tmp_path: Path) -> None:
    huge = tmp_path / "huge.jpg"  # the 10,000 x 10,000 case runs through the API in test_video_api
    Image.new("RGB", (6000, 6000), (20, 120, 220)).save(huge, quality=95)
    request = build(str(huge))
    assert request.image.size == (1024, 576)  # square counts as landscape
    assert np.abs(np.asarray(request.image, dtype=int)[288, 512] - (20, 120, 220)).max() <= 2
    assert request.notices == ("picture downscaled from 6000x6000 to 1024x576 (crop)",)
    side = int(MAX_INPUT_PIXELS**0.5) + 10
    too_big = tmp_path / "too_big.png"
    too_big.write_bytes(png_header(side, side))  # refused from the header, before any decoding
    with pytest.raises(InputError, match=r"image: is \d+×\d+ pixels, more than the [\d,]+ pixels accepted"):
        build(str(too_big))


def test_orientation_transparency_and_pad(tmp_path: Path) -> None:
    portrait = Image.new("RGBA", (300, 600), (255, 0, 0, 0))
    portrait.paste((0, 0, 255, 255), (100, 200, 200, 400))
    request = build(portrait, fit="pad")
    assert request.image.size == (576, 1024)
    assert request.image.getpixel((5, 5)) == (255, 255, 255)  # transparent red became white
    assert request.image.getpixel((288, 512)) == (0, 0, 255)
    assert any("transparent areas composited on white" in notice for notice in request.notices)
    # pad on a landscape frame leaves white bars at the sides of a square picture
    padded = fit_image(Image.new("RGB", (100, 100), "black"), (1024, 576), "pad")
    assert padded.getpixel((10, 288)) == (255, 255, 255) and padded.getpixel((512, 288)) == (0, 0, 0)


def test_grayscale_sixteen_bit_and_exif_rotation(tmp_path: Path) -> None:
    gray16 = Image.fromarray(np.full((100, 200), 65535, dtype=np.uint16))
    assert build(gray16).image.getpixel((0, 0)) == (255, 255, 255)
    photo = Image.new("RGB", (400, 200), "green")
    exif = photo.getexif()
    exif[0x0112] = 6  # stored landscape, shown portrait (camera turned)
    photo.save(tmp_path / "turned.jpg", exif=exif)
    request = build(str(tmp_path / "turned.jpg"))
    assert request.image.size == (576, 1024) and request.source_size == (200, 400)


def test_model_size_follows_the_orientation() -> None:
    assert model_size((1920, 1080), 1024, 576) == (1024, 576)
    assert model_size((1080, 1920), 1024, 576) == (576, 1024)
    assert model_size((500, 500), 576, 1024) == (1024, 576)


@pytest.mark.parametrize("field", ["num_frames", "fps", "motion_bucket_id", "noise_aug_strength", "steps",
                                   "decode_chunk_size", "seed"])
def test_numbers_too_large_for_a_float_name_the_field(photo: Path, field: str) -> None:
    with pytest.raises(InputError, match=rf"^{field}: must be between .*, got 100000000000… \(a 401-digit number\)$"):
        build(str(photo), **{field: 10**400})


def test_values_just_outside_the_range_are_shown_as_sent(photo: Path) -> None:
    with pytest.raises(InputError, match=r"^noise_aug_strength: must be between 0 and 1, got 1\.0000001$"):
        build(str(photo), noise_aug_strength=1.0000001)
    with pytest.raises(InputError, match=r"^num_frames: must be between 1 and 50, got 50\.0000001$"):
        build(str(photo), num_frames=50.0000001)


def test_lone_surrogates_are_refused_naming_the_field(photo: Path) -> None:
    surrogate = r"is not valid Unicode text \(a lone surrogate, U\+D800, at position 3\)"
    with pytest.raises(InputError, match=rf"^fit: {surrogate}"):
        build(str(photo), fit="pad\ud800")
    with pytest.raises(InputError, match=r"^image: is not valid Unicode text \(a lone surrogate, U\+DFFF"):
        build(str(photo.parent / "\udfff.png"))
