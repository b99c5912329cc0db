"""Input images and the variation/img2img requests: clear errors naming the field, documented fits."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backends.cascade.requests import ImageVariationRequest, Img2ImgRequest
from backends.runtime.errors import InputError
from backends.runtime.image_input import MAX_INPUT_PIXELS, fit_output_size, load_image


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` but holds no pixel data: only the header is valid."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def saved(image: Image.Image, path: Path, **options: Any) -> str:
    image.save(path, **options)
    return str(path)


def variation(image: Any, width: Any = 0, height: Any = 0, **changes: Any) -> ImageVariationRequest:
    return ImageVariationRequest.build(image, changes.get("prompt", ""), "", width, height,
                                       changes.get("num_images", 1), changes.get("seed", 3))


@pytest.mark.parametrize("value", [None, "", "   "])
def test_no_image_is_an_error_naming_the_field(value: Any) -> None:
    with pytest.raises(InputError, match="^image: no image given"):
        variation(value)


def test_unreadable_files_are_errors_naming_the_field(tmp_path: Path) -> None:
    corrupt = tmp_path / "holiday.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError, match=r"^image: could not read holiday\.png as an image"):
        variation(str(corrupt))
    truncated = tmp_path / "cut.png"
    whole = Path(saved(Image.new("RGB", (64, 64), (9, 99, 199)), tmp_path / "whole.png"))
    truncated.write_bytes(whole.read_bytes()[:60])
    with pytest.raises(InputError, match=r"^image: could not read cut\.png"):
        variation(str(truncated))
    with pytest.raises(InputError, match="could not read missing.png"):
        variation(str(tmp_path / "missing.png"))
    with pytest.raises(InputError, match="^image: expected an image file, got int"):
        variation(12)


def test_too_small_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^image: is 1×1 pixels; each side must be at least 32"):
        variation(saved(Image.new("RGB", (1, 1)), tmp_path / "dot.png"))
    with pytest.raises(InputError, match=r"is 300×20 pixels"):
        variation(Image.new("RGB", (300, 20)))


def test_decompression_bombs_are_refused_before_decoding(tmp_path: Path) -> None:
    over_ours = png_header_only(tmp_path / "big.png", 12_000, 12_000)  # 144 MP > 134 MP
    with pytest.raises(InputError, match=rf"^image: is 12000×12000 pixels, more than the {MAX_INPUT_PIXELS:,}"):
        variation(str(over_ours))
    over_pil = png_header_only(tmp_path / "huge.png", 20_000, 20_000)  # PIL's own guard fires first
    with pytest.raises(InputError, match=r"^image: huge\.png is too large to decode safely"):
        variation(str(over_pil))


def test_grayscale_transparent_and_16_bit_inputs_become_rgb(tmp_path: Path) -> None:
    gray = load_image("image", saved(Image.new("L", (64, 48), 128), tmp_path / "gray.png"))
    assert gray.image.mode == "RGB" and gray.image.getpixel((0, 0)) == (128, 128, 128)
    assert gray.notices == ("L input converted to RGB",)

    rgba = Image.new("RGBA", (64, 48), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 32, 48))  # left half fully transparent
    flat = load_image("image", saved(rgba, tmp_path / "cutout.png"))
    assert flat.image.mode == "RGB"
    assert flat.image.getpixel((10, 10)) == (255, 255, 255)  # composited on white, not black
    assert flat.image.getpixel((50, 10)) == (255, 0, 0)
    assert "transparent areas composited on white" in flat.notices[0]

    deep = Image.fromarray(np.full((48, 64), 32768, dtype=np.uint16))
    converted = load_image("image", saved(deep, tmp_path / "deep.png"))
    assert converted.image.getpixel((0, 0)) == (128, 128, 128)  # scaled, not clipped to white


def test_huge_inputs_are_downscaled_and_reported(tmp_path: Path) -> None:
    wide = load_image("image", Image.new("RGB", (4096, 1024), (1, 2, 3)))
    assert wide.image.size == (2048, 512) and wide.original_size == (4096, 1024)
    assert wide.notices == ("input downscaled from 4096×1024 to 2048×512",)


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = saved(Image.new("RGB", (80, 40), (200, 10, 10)), tmp_path / "phone.jpg", exif=exif)
    checked = load_image("image", path)
    assert checked.image.size == (40, 80) and checked.original_size == (40, 80)


def test_the_callers_image_is_not_changed() -> None:
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    load_image("image", rgba)
    assert rgba.mode == "RGBA" and rgba.getpixel((0, 0)) == (0, 0, 0, 0)


def test_size_from_the_input_follows_its_aspect() -> None:
    def fit(width: int | None, height: int | None, size: tuple[int, int]) -> tuple[int, int]:
        return fit_output_size(width, height, size, 1024 * 1024, 128, 256, 2048)

    assert fit(None, None, (4000, 3000)) == (1152, 896)
    assert fit(None, None, (1000, 1000)) == (1024, 1024)
    assert fit(None, None, (100, 2000)) == (256, 2048)  # clamped; the crop covers the rest
    assert fit(768, None, (1600, 900)) == (768, 384)
    assert fit(None, 512, (1600, 900)) == (896, 512)
    assert fit(640, 384, (10, 10)) == (640, 384)


def test_requests_validate_in_contract_order(tmp_path: Path) -> None:
    photo = saved(Image.new("RGB", (400, 300), (50, 100, 150)), tmp_path / "photo.png")
    job = variation(photo, num_images=3, seed=-1)
    assert (job.width, job.height, job.num_images, job.input_size) == (1152, 896, 3, (400, 300))
    assert 0 <= job.seed < 2**32 and job.image.size == (400, 300)
    assert "output size 1152×896 from the input's aspect ratio" in job.notices
    assert variation(photo, width=512, height="").width == 512
    assert "image" not in job.as_dict() and job.as_dict()["input_size"] == [400, 300]
    with pytest.raises(InputError, match="^width: must be a multiple of 128"):
        variation(photo, width=300)
    with pytest.raises(InputError, match="^num_images: must be between 1 and 4"):
        variation(photo, num_images=5)

    edit = Img2ImgRequest.build(photo, "a cat", "", "0.25", 0, 0, 9)
    assert (edit.strength, edit.num_images, edit.seed) == (0.25, 1, 9)
    for bad in (-0.1, 1.5, "strong"):
        with pytest.raises(InputError, match="^strength: "):
            Img2ImgRequest.build(photo, "a cat", "", bad, 0, 0, 9)
    # The defaults the contract leaves to the preset travel with the request.
    custom = Img2ImgRequest.build(photo, "", "", 1, 256, 256, 1, area=256 * 256,
                                  sampling={"prior_steps": 3, "decoder_steps": 2})
    assert (custom.prior_steps, custom.decoder_steps, custom.width) == (3, 2, 256)


@pytest.mark.parametrize(("orientation", "size", "notice"), [
    (2, (80, 40), "input mirrored left to right from its EXIF orientation"),
    (3, (80, 40), "input rotated 180° from its EXIF orientation"),
    (4, (80, 40), "input mirrored top to bottom from its EXIF orientation"),
    (5, (40, 80), "input mirrored left to right and rotated 90° counter-clockwise from its EXIF orientation"),
    (6, (40, 80), "input rotated 90° clockwise from its EXIF orientation"),
    (7, (40, 80), "input mirrored left to right and rotated 90° clockwise from its EXIF orientation"),
    (8, (40, 80), "input rotated 90° counter-clockwise from its EXIF orientation"),
])
def test_exif_rotation_is_reported_in_the_notices(tmp_path: Path, orientation: int, size: tuple[int, int],
                                                  notice: str) -> None:
    stored = Image.new("RGB", (80, 40), (0, 0, 0))
    stored.paste((255, 255, 255), (0, 0, 10, 10))  # a white mark in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    checked = load_image("image", saved(stored, tmp_path / "phone.png", exif=exif))
    assert checked.image.size == size and checked.original_size == size
    assert checked.notices == (notice,)
    # The notice says what was done: the mark is where that turn puts the stored top-left corner.
    corner = {2: (75, 5), 3: (75, 35), 4: (5, 35), 5: (5, 5), 6: (35, 5), 7: (35, 75), 8: (5, 75)}[orientation]
    assert checked.image.getpixel(corner) == (255, 255, 255)


def test_upright_pictures_get_no_rotation_notice(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 1
    assert load_image("image", saved(Image.new("RGB", (80, 40)), tmp_path / "up.png", exif=exif)).notices == ()
    assert load_image("image", Image.new("RGB", (80, 40))).notices == ()


def test_the_rotation_notice_reaches_the_requests_info(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    path = saved(Image.new("RGB", (400, 300), (9, 9, 9)), tmp_path / "turned.png", exif=exif)
    job = variation(path)
    assert job.input_size == (300, 400)
    assert job.notices[0] == "input rotated 90° counter-clockwise from its EXIF orientation"


def tiny_fit(size: tuple[int, int]) -> tuple[int, int]:
    """The size from the input at the tiny preset's 256² area (sides 256–2048, multiples of 128)."""
    return fit_output_size(None, None, size, 256 * 256, 128, 256, 2048)


def test_size_from_the_input_keeps_its_aspect_at_small_areas() -> None:
    # Rounding each side alone gave 256×256 for all of these: a quarter of a 4:3 picture cropped.
    assert tiny_fit((640, 480)) == (384, 256)
    assert tiny_fit((480, 640)) == (256, 384)
    assert tiny_fit((600, 400)) == (384, 256)  # 3:2 exactly
    assert tiny_fit((1600, 900)) == (512, 256)
    assert tiny_fit((1280, 1024)) == (512, 384)  # 5:4: 384×256 would crop 1/6, so the next size up
    assert tiny_fit((1000, 1000)) == (256, 256)
    assert tiny_fit((1100, 1000)) == (256, 256)  # close enough to square: the area decides


@pytest.mark.parametrize("area", [256 * 256, 768 * 768, 1024 * 1024])
def test_size_from_the_input_crops_at_most_an_eighth_where_the_grid_allows(area: int) -> None:
    for aspect in np.geomspace(1 / 6, 6, 41):
        size = (round(3000 * aspect), 3000)
        width, height = fit_output_size(None, None, size, area, 128, 256, 2048)
        assert width % 128 == 0 and height % 128 == 0 and 256 <= min(width, height) <= max(width, height) <= 2048
        ratio = (width / height) / (size[0] / size[1])
        assert 1 - min(ratio, 1 / ratio) <= 1 / 8 + 1e-9, (area, size, (width, height))
        assert (width >= height) == (size[0] >= size[1]) or abs(aspect - 1) < 0.15  # orientation kept


def test_the_fitted_size_and_the_crop_are_in_the_notices(tmp_path: Path) -> None:
    photo = saved(Image.new("RGB", (640, 480), (50, 100, 150)), tmp_path / "photo.png")
    job = ImageVariationRequest.build(photo, "", "", 0, 0, 1, 3, area=256 * 256)
    assert (job.width, job.height) == (384, 256)
    assert "output size 384×256 from the input's aspect ratio" in job.notices
    assert not any("cropped" in note for note in job.notices)  # CLIP sees its own centre crop anyway
    edit = Img2ImgRequest.build(photo, "", "", 0.5, 0, 0, 3, area=256 * 256)
    assert (edit.width, edit.height) == (384, 256)
    assert "input aspect 1.33 cropped to the output's 1.50: 11% of the picture cut at its edges" in edit.notices
    square = Img2ImgRequest.build(photo, "", "", 0.5, 256, 256, 3, area=256 * 256)  # a size given: still said
    assert "input aspect 1.33 cropped to the output's 1.00: 25% of the picture cut at its edges" in square.notices
    exact = Img2ImgRequest.build(saved(Image.new("RGB", (600, 400)), tmp_path / "exact.png"), "", "", 0.5, 0, 0, 3,
                                 area=256 * 256)
    assert (exact.width, exact.height) == (384, 256) and not any("cropped" in note for note in exact.notices)
