"""The tabs' streaming handler: previews reach the gallery during the job, the final result is the same."""

from __future__ import annotations

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
    assert len(previews) == len(range(every, 5, every))  # 4 stage C steps
    for gallery, info in previews:
        assert info == gr.skip()  # the info waits for the result
        assert len(gallery) == 2 and all(isinstance(image, Image.Image) for image, _ in gallery)
        assert gallery[0][1].startswith("preview: stage C step")
    assert [caption for _, caption in previews[-1][0]] == ["preview: stage C step 4/4"] * 2
    assert all(np.array_equal(a, b) for a, b in zip(final_pixels(final), final_pixels(plain[0])))
    assert final[1]["seed"] == 21 and len(final[1]["files"]) == 2


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
