"""The tabs' streaming handler: previews reach the gallery during the job, the final result is the same."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from backends.cascade.requests import Img2ImgRequest, TextToImageRequest
from backends.families import FAMILIES
from backends.runtime.studio import Studio, StudioConfig
from tabs.streaming import image_job


@pytest.fixture(scope="module")
def studio(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Studio:
    return Studio(StudioConfig(preset="tiny", cache_dir=tiny_cache,
                               outputs_dir=tmp_path_factory.mktemp("outputs")), FAMILIES)


def text_job() -> TextToImageRequest:
    return TextToImageRequest.build("a red lighthouse", "", 256, 256, 4, 2, 4.0, 0.0, 2, 21)


def final_pixels(update: tuple) -> list[np.ndarray]:
    gallery, _ = update
    return [np.asarray(Image.open(path)) for path, _ in gallery]


def test_previews_stream_into_the_gallery_and_the_result_is_unchanged(studio: Studio) -> None:
    plain = list(image_job(studio, "text_to_image", text_job, False, None, gr.Progress(), what="test"))
    assert len(plain) == 1  # the API's way: one final update

    streamed = list(image_job(studio, "text_to_image", text_job, True, None, gr.Progress(), what="test"))
    previews, final = streamed[:-1], streamed[-1]
    every = studio.preset.settings.cascade.defaults.preview_every  # 2 in the shipped settings
    assert len(previews) == 2 * len(range(every, 5, every))  # 4 stage C steps, for each image in turn
    for gallery, info in previews:
        assert info == gr.skip()  # the info waits for the result
        assert len(gallery) == 1 and all(isinstance(image, Image.Image) for image, _ in gallery)
        assert gallery[0][1].startswith("preview: stage C step")
    assert [caption for _, caption in previews[-1][0]] == ["preview: stage C step 4/4"]
    assert all(np.array_equal(a, b) for a, b in zip(final_pixels(final), final_pixels(plain[0])))
    assert final[1]["seed"] == 21 and len(final[1]["files"]) == 2
    assert [caption for _, caption in final[0]] == ["seed 21 #1", "seed 22 #2"]


def test_errors_and_stop_reach_the_handler_as_user_errors(studio: Studio, tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"nope")
    with pytest.raises(gr.Error, match=r"Input picture \(image\): could not read broken.png"):
        list(image_job(studio, "img2img", lambda: Img2ImgRequest.build(str(corrupt), "", "", 0.5, 0, 0, 1),
                       True, None, gr.Progress(), what="test"))

    # Stop pressed while the worker runs: not a failure. The handler ends without an error and
    # without a result (the tab's Stop chain puts the previous result back), and saves nothing.
    saved = set(studio.outputs.root.rglob("*.png"))
    jobs = image_job(studio, "text_to_image", text_job, True, None, gr.Progress(), what="test")
    first = next(jobs)  # a preview, so the job is running on its worker thread
    assert isinstance(first[0][0][0], Image.Image)
    assert studio.stop_job("anonymous")
    rest = list(jobs)
    assert all(caption.startswith("preview:") for gallery, _ in rest for _, caption in gallery)
    assert set(studio.outputs.root.rglob("*.png")) == saved
    assert studio.registry.run("text_to_image", text_job(), lambda *a: None).images  # still serving


class StopAt:
    """A ``gr.Progress`` stand-in that presses Stop when the bar's text first contains ``text``."""

    def __init__(self, studio: Studio, text: str) -> None:
        self.studio, self.text, self.lines = studio, text, []

    def __call__(self, value: object, desc: str | None = None, unit: str = "steps") -> None:
        self.lines.append(desc or "")
        if self.text in (desc or ""):
            self.studio.stop_job("anonymous")


@pytest.mark.parametrize("previews", [False, True])
def test_stop_keeps_and_saves_the_images_already_finished(studio: Studio, previews: bool) -> None:
    """Stop during image 2 of 3: image 1 is shown and saved, carrying its own seed, as a job of
    one image at that seed would; image 2 and 3 are not made."""
    def three() -> TextToImageRequest:
        return TextToImageRequest.build("a red lighthouse", "", 256, 256, 4, 2, 4.0, 0.0, 3, 30)

    saved = set(studio.outputs.root.rglob("*.png"))
    bar = StopAt(studio, "Image 2/3 · Stage C (prior): step 1/4")
    updates = list(image_job(studio, "text_to_image", three, previews, None, bar, what="test"))  # type: ignore[arg-type]
    gallery, info = updates[-1]
    assert [caption for _, caption in gallery] == ["seed 30 #1"]
    assert info["seeds"] == [30] and info["num_images"] == 3
    assert info["notices"][-1] == "stopped after 1 of 3 images: the finished ones are kept"
    (path,) = set(studio.outputs.root.rglob("*.png")) - saved
    assert [str(path)] == info["files"] and "-30" in path.name
    meta = json.loads(Image.open(path).text["studio"])
    assert (meta["seed"], meta["num_images"], meta["batch_seed"], meta["image_index"]) == (30, 1, 30, 0)
    assert "Seed: 30," in Image.open(path).text["parameters"]
    alone = studio.registry.run("text_to_image", replace(three(), num_images=1), lambda *a: None)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(alone.images[0]))
    # One bar over the three images' stages: image 1 (7 of 21 steps) was done when image 2 began.
    assert any(line.startswith("Image 2/3 · Stage C (prior): step 1/4 · 38% of the job") for line in bar.lines)
