"""The SD endpoints' requests: sizes on the 64 px grid, the offered models, masks."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from backends.runtime.errors import InputError
from backends.runtime.image_requests import SdImageRequest, SdTextToImageRequest, load_mask, mask_fraction

OFFERED = ("sd3.5-medium", "sdxl")


def text(**changes: object) -> SdTextToImageRequest:
    values = dict(prompt="a lighthouse", negative_prompt="", width=1024, height=768, steps=30, guidance=5.0,
                  num_images=1, seed=3, model="")
    values.update(changes)
    return SdTextToImageRequest.build(*values.values(), offered=OFFERED, default_model="sdxl")


def picture(size: tuple[int, int] = (512, 384)) -> Image.Image:
    return Image.new("RGB", size, (120, 30, 200))


def mask(size: tuple[int, int] = (512, 384), box: tuple[int, int, int, int] = (100, 100, 200, 200)) -> Image.Image:
    marks = Image.new("L", size, 0)
    marks.paste(255, box)
    return marks


def test_an_empty_model_is_the_presets_default_and_an_unknown_one_lists_the_offer() -> None:
    assert text().model == "sdxl"
    assert text(model=" sd3.5-medium ").model == "sd3.5-medium"
    with pytest.raises(InputError, match=r"^model: must be one of sd3.5-medium, sdxl \(this preset's models\) "
                                         r"or empty for sdxl, got 'sd3.5-large'"):
        text(model="sd3.5-large")
    with pytest.raises(InputError, match="^model: .*got 7"):
        text(model=7)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("width", 1000, r"must be a multiple of 64 between 256 and 2048, got 1000 \(try 960 or 1024\)"),
    ("height", 128, "between 256 and 2048"),
    ("steps", 0, "steps"),
    ("guidance", float("nan"), "guidance"),
    ("num_images", 5, "num_images"),
    ("prompt", "  ", "is empty"),
])
def test_bad_text_to_image_fields_are_named(field: str, value: object, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        text(**{field: value})
    assert caught.value.field == field


def test_img2img_size_zero_follows_the_picture_on_the_64_grid() -> None:
    request = SdImageRequest.img2img(picture((640, 480)), "a cat", "", 0.6, 0, 0, 1, "", offered=OFFERED,
                                     default_model="sdxl", sampling={"steps": 20, "guidance": 4.0})
    assert (request.width % 64, request.height % 64) == (0, 0)
    assert request.width / request.height == pytest.approx(4 / 3, rel=0.15)
    assert request.image.size == (request.width, request.height)
    assert (request.steps, request.guidance, request.strength, request.mask) == (20, 4.0, 0.6, None)
    with pytest.raises(InputError, match="^strength"):
        SdImageRequest.img2img(picture(), "a cat", "", 1.5, 0, 0, 1, "", offered=OFFERED, default_model="sdxl")


def test_inpaint_keeps_an_on_grid_picture_as_it_is(tmp_path: Path) -> None:
    source = picture()
    path = tmp_path / "mask.png"
    mask().save(path)
    request = SdImageRequest.inpaint(source, str(path), "a door", "", 0.9, 5, "sd3.5-medium", offered=OFFERED,
                                     default_model="sdxl")
    assert request.image.tobytes() == source.tobytes()
    assert request.mask.size == source.size and request.mask.mode == "L"
    assert request.as_dict()["mask_fraction"] == pytest.approx(100 * 100 / (512 * 384), rel=1e-3)
    assert request.model == "sd3.5-medium"


def test_inpaint_off_the_grid_fits_picture_and_mask_alike() -> None:
    request = SdImageRequest.inpaint(picture((500, 380)), mask((500, 380)), "a door", "", 0.9, 5, "",
                                     offered=OFFERED, default_model="sdxl", area=512 * 384)
    assert request.image.size == request.mask.size
    assert request.image.size[0] % 64 == 0 and request.image.size[1] % 64 == 0
    assert any("fitted" in notice for notice in request.notices)


def test_a_drawn_layer_counts_its_alpha() -> None:
    layer = Image.new("RGBA", (512, 384), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (0, 0, 256, 384))
    assert mask_fraction(load_mask(layer, (512, 384))) == pytest.approx(0.5)


def test_a_mask_of_the_wrong_size_or_an_empty_one_is_refused() -> None:
    with pytest.raises(InputError, match=r"^mask: is 256×256 but the image is 512×384; draw the mask"):
        SdImageRequest.inpaint(picture(), mask((256, 256), (0, 0, 10, 10)), "a door", "", 0.9, 5, "",
                               offered=OFFERED, default_model="sdxl")
    with pytest.raises(InputError, match="^mask: is empty"):
        SdImageRequest.inpaint(picture(), Image.new("L", (512, 384), 0), "a door", "", 0.9, 5, "",
                               offered=OFFERED, default_model="sdxl")
    with pytest.raises(InputError, match="^mask: no image given"):
        SdImageRequest.inpaint(picture(), None, "a door", "", 0.9, 5, "", offered=OFFERED, default_model="sdxl")
