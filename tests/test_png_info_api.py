"""``/png_info`` from outside, and ``/generate_image``'s contract after the Image tab's sliders
(issue #14, items 13–16): the real app in-process, driven through gradio_client."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, PngImagePlugin

from backends.runtime.studio import Studio
from tabs.common import FIELD_LABELS

A1111_TEXT = ("a castle on a hill, golden hour\nNegative prompt: fog, blur\n"
              "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 4242, "
              "Size: 512x768, Model hash: 0123abcd, Lora hashes: \"a: 1, b: 2\", Version: v1.10.1")
GENERATE = ["prompt", "negative_prompt", "width", "height", "prior_steps", "decoder_steps", "prior_guidance",
            "decoder_guidance", "num_images", "seed"]


def refusal(field: str) -> str:
    """How a refusal starts: the field's on-screen label, then its API name (tabs.common.labelled)."""
    return rf"^{re.escape(FIELD_LABELS[field])} \({re.escape(field)}\): "


def png(path: Path, **texts: str) -> str:
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    Image.new("RGB", (64, 48), "teal").save(path, pnginfo=info)
    return str(path)


def test_png_info_reads_our_results_and_a1111_files_back(launch_app: Callable[..., str], tmp_path: Path) -> None:
    client = Client(launch_app(), verbose=False)
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert [p["parameter_name"] for p in endpoints["/png_info"]["parameters"]] == ["image"]

    _, info = client.predict("a red lighthouse", "blurry", 256, 384, 3, 2, 4.0, 0.0, 1, 123,
                             api_name="/generate_image")
    read = client.predict(handle_file(info["files"][0]), api_name="/png_info")
    assert read["source"] == "cascade-studio"
    assert {key: read[key] for key in GENERATE} == dict(
        prompt="a red lighthouse", negative_prompt="blurry", width=256, height=384, prior_steps=3, decoder_steps=2,
        prior_guidance=4.0, decoder_guidance=0.0, num_images=1, seed=123)
    assert read["other"]["task"] == "text_to_image" and read["other"]["preset"] == "tiny"
    assert "Seed: 123" in read["raw"]

    read = client.predict(handle_file(png(tmp_path / "a1111.png", parameters=A1111_TEXT)), api_name="/png_info")
    assert read["source"] == "a1111" and read["raw"] == A1111_TEXT
    assert {key: read[key] for key in ("prompt", "negative_prompt", "width", "height", "prior_steps",
                                       "prior_guidance", "seed")} == dict(
        prompt="a castle on a hill, golden hour", negative_prompt="fog, blur", width=512, height=768,
        prior_steps=30, prior_guidance=6.5, seed=4242)
    assert read["other"] == {"Sampler": "DPM++ 2M", "Schedule type": "Karras", "Model hash": "0123abcd",
                             "Lora hashes": "a: 1, b: 2", "Version": "v1.10.1"}


def test_png_info_refuses_what_it_cannot_read_naming_the_field(launch_app: Callable[..., str],
                                                               tmp_path: Path) -> None:
    client = Client(launch_app(), verbose=False)
    (tmp_path / "notes.png").write_text("hello, I am text")
    Image.new("RGB", (32, 32), "red").save(tmp_path / "photo.jpg")
    cases = {
        "no image": (None, "no image given"),
        "a path as text": (str(tmp_path / "x.png"), "expected an uploaded file, got the text"),
        "a number": (5, "expected an uploaded file, got int"),
        "text named .png": (handle_file(str(tmp_path / "notes.png")), r"notes\.png is not a PNG file"),
        "a JPEG": (handle_file(str(tmp_path / "photo.jpg")), r"photo\.jpg is not a PNG file"),
        "a PNG without parameters": (handle_file(png(tmp_path / "plain.png", Title="holiday")),
                                     r"plain\.png carries no generation parameters.*text chunks: Title"),
        "broken JSON, no text": (handle_file(png(tmp_path / "broken.png", studio="{not json")),
                                 r"its 'studio' chunk is not a JSON object"),
    }
    for label, (value, expected) in cases.items():
        with pytest.raises(AppError) as refused:
            client.predict(value, api_name="/png_info")
        message = str(refused.value)
        assert re.match(refusal("image"), message), (label, message)
        assert re.search(expected, message), (label, message)
    # ... and it keeps answering.
    assert client.predict(handle_file(png(tmp_path / "ok.png", parameters=A1111_TEXT)),
                          api_name="/png_info")["seed"] == 4242


def test_png_info_never_waits_behind_a_gpu_job(launch_studio: Callable[..., tuple[Studio, str]],
                                               tmp_path: Path) -> None:
    """A GPU job is held inside the GPU queue's one slot (a fault site that blocks) while
    ``/png_info`` answers: it is not in that queue."""
    studio, url = launch_studio()
    client = Client(url, verbose=False)
    held, released = threading.Event(), threading.Event()

    def hold() -> BaseException:
        held.set()
        released.wait(timeout=120)
        return RuntimeError("released by the test")

    studio.manager.faults.arm("cascade.prior", error=hold)
    job = client.submit("a red lighthouse", "", 256, 256, 3, 2, 4.0, 0.0, 1, 7, api_name="/generate_image")
    try:
        assert held.wait(timeout=120), "the GPU job never reached its stage C"
        answer = client.submit(handle_file(png(tmp_path / "a.png", parameters=A1111_TEXT)), api_name="/png_info")
        assert answer.result(timeout=30)["seed"] == 4242
        assert not job.done(), "the GPU job ended before /png_info answered: the test proved nothing"
    finally:
        released.set()
    with pytest.raises(AppError):
        job.result(timeout=120)  # the held job fails with the injected error; the app goes on
    assert studio.manager.faults.pending("cascade.prior") == 0


def test_generate_image_keeps_its_ten_inputs_and_its_own_checks_behind_the_sliders(
        launch_app: Callable[..., str]) -> None:
    """Steps, guidance and images are sliders on screen; the API still takes DESIGN.md's ten inputs in
    order and refuses bad values naming the field, and a value between slider steps is used as sent."""
    client = Client(launch_app(), verbose=False)
    spec = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate_image"]
    assert [p["parameter_name"] for p in spec["parameters"]] == GENERATE
    assert {p["parameter_name"]: p["component"] for p in spec["parameters"]}["prior_steps"] == "Slider"
    good = dict(prompt="a red lighthouse", negative_prompt="", width=256, height=256, prior_steps=2, decoder_steps=2,
                prior_guidance=4.05, decoder_guidance=0.0, num_images=1, seed=9)
    bad: dict[str, tuple[Any, str]] = {
        "prior_steps": (1000, "must be between 1 and 100, got 1000$"),
        "decoder_steps": ("abc", "expected a number, got 'abc'"),
        "num_images": (9, "must be between 1 and 4, got 9$"),
        "prior_guidance": (20.5, "must be between 0 and 20, got 20.5$"),
        "decoder_guidance": (-1, "must be between 0 and 20, got -1$"),
    }
    for field, (value, expected) in bad.items():
        with pytest.raises(AppError) as refused:
            client.predict(*{**good, field: value}.values(), api_name="/generate_image")
        assert re.match(refusal(field) + expected, str(refused.value)), str(refused.value)
    _, info = client.predict(*good.values(), api_name="/generate_image")
    assert info["seed"] == 9 and info["prior_guidance"] == 4.05 and info["prior_steps"] == 2
