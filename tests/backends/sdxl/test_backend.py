"""SDXL backend on tiny models: info, seeds, progress, Stop, inpaint seams, memory placement, the VAE upcast."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from backends.families import FAMILIES, load_preset
from backends.runtime.errors import Cancelled, InputError, UnknownNameError
from backends.runtime.image_requests import SdImageRequest
from backends.runtime.loading import LoadContext
from backends.runtime.memory import RESERVE_FRACTION, MemoryManager
from backends.runtime.outputs import OutputWriter
from backends.runtime.probe import GB, FakeProbe
from backends.runtime.registry import Registry
from backends.sdxl import vae
from backends.sdxl.backend import (
    DECODE,
    IMG2IMG,
    INPAINT,
    REFINER_UNET,
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    TEXT_TO_IMAGE,
    UNET,
    VAE,
    SdxlBackend,
    SdxlResult,
)
from backends.sdxl.pipelines import TextToImage, make
from backends.sdxl.stages import BASE, REFINER
from tests.backends.sdxl.common import image_request, picture, pixels, square_mask, text_request, tiny_settings

Reports = list[tuple[str, int, int]]


def recorder(reports: Reports) -> Callable[[str, int, int], None]:
    return lambda stage, step, total: reports.append((stage, step, total))


def placed(manager: MemoryManager) -> set[str]:
    return {status.name for status in manager.statuses() if status.placement == "gpu"}


@pytest.fixture(scope="module")
def baseline(sdxl: SdxlBackend) -> SdxlResult:
    return sdxl.run(TEXT_TO_IMAGE, text_request(num_images=2), lambda *_: None)


def test_init_registers_five_components_and_loads_nothing(sdxl_ctx: LoadContext) -> None:
    manager = MemoryManager(FakeProbe(device_total=16 * GB), device="cpu")
    backend = SdxlBackend(tiny_settings(), manager, sdxl_ctx)
    assert backend.component_names() == [TEXT_ENCODER, TEXT_ENCODER_2, UNET, REFINER_UNET, VAE]
    assert {s.name: s.placement for s in manager.statuses()} == {n: "disk" for n in backend.component_names()}
    with pytest.raises(UnknownNameError, match="known tasks: sdxl_text_to_image, sdxl_img2img, sdxl_inpaint"):
        backend.run("text_to_image", text_request(), lambda *_: None)
    with pytest.raises(TypeError, match="sdxl_inpaint needs an SdImageRequest with a mask"):
        backend.run(INPAINT, image_request(picture(64)), lambda *_: None)
    with pytest.raises(ValueError, match=r"sdxl.offer names \['sd3.5-large'\]"):
        SdxlBackend(tiny_settings(offer=["sd3.5-large"]), manager, sdxl_ctx)


def test_bad_options_fail_before_any_model_loads(sdxl_ctx: LoadContext) -> None:
    manager = MemoryManager(FakeProbe(device_total=16 * GB), device="cpu")
    backend = SdxlBackend(tiny_settings(), manager, sdxl_ctx)
    for options, field in (({"refiner": "yes please"}, "refiner"), ({"high_noise_frac": 1}, "high_noise_frac"),
                           ({"cfg_rescale": 0.7}, "options")):
        with pytest.raises(InputError) as caught:
            backend.run(TEXT_TO_IMAGE, text_request(options=options), lambda *_: None)
        assert caught.value.field == field
    with pytest.raises(InputError, match="high_noise_frac: 0.8 leaves the base model none of 1 steps"):
        backend.run(TEXT_TO_IMAGE, text_request(steps=1, options={"refiner": True}), lambda *_: None)
    assert {s.placement for s in manager.statuses()} == {"disk"}


def test_images_info_and_saving(baseline: SdxlResult, tmp_path: Path) -> None:
    assert [image.size for image in baseline.images] == [(256, 256)] * 2
    assert all(image.mode == "RGB" for image in baseline.images)
    assert baseline.latents.shape == (2, 4, 32, 32) and baseline.latents.device.type == "cpu"
    info = baseline.info
    assert (info["backend"], info["task"], info["model"], info["seed"], info["seeds"]) == (
        "sdxl", TEXT_TO_IMAGE, "sdxl", 7, [7, 8])
    assert (info["width"], info["height"], info["steps"], info["guidance"], info["num_images"]) == (256, 256, 3, 5.0, 2)
    assert info["options"] == {"refiner": False, "high_noise_frac": 0.8}
    assert (info["base_steps"], info["refiner_steps"], info["dtype"], info["vae_float32"]) == (3, 0, "float32", False)
    assert info["unet"] == "tiny:sdxl/unet" and "refiner_unet" not in info
    assert set(info["timings"]) == {"text_encoder", "unet", "vae_decode", "total"}
    assert info["notices"] == []
    assert not np.array_equal(*pixels(baseline.images))  # each image its own noise
    saved = OutputWriter(tmp_path).save_images(baseline.images, info)
    assert len(saved) == 2 and all(Path(path).is_file() for path in saved)


def test_each_image_of_a_batch_is_the_one_image_job_at_its_own_seed(sdxl: SdxlBackend, baseline: SdxlResult) -> None:
    alone = sdxl.run(TEXT_TO_IMAGE, text_request(seed=8), lambda *_: None)
    assert np.array_equal(pixels(alone.images)[0], pixels(baseline.images)[1])
    assert torch.equal(alone.latents[0], baseline.latents[1])
    other = sdxl.run(TEXT_TO_IMAGE, text_request(seed=9), lambda *_: None)
    assert not np.array_equal(pixels(other.images)[0], pixels(baseline.images)[1])
    top = sdxl.run(TEXT_TO_IMAGE, text_request(size=256, seed=2**32 - 1, num_images=2, steps=1), lambda *_: None)
    assert top.info["seeds"] == [2**32 - 1, 0]


def test_progress_reports_every_step_of_each_model(sdxl: SdxlBackend) -> None:
    reports: Reports = []
    sdxl.run(TEXT_TO_IMAGE, text_request(steps=4, options={"refiner": True, "high_noise_frac": 0.7}),
             recorder(reports))
    assert reports == [(BASE, 1, 2), (BASE, 2, 2), (REFINER, 1, 2), (REFINER, 2, 2), (DECODE, 1, 1)]
    reports.clear()
    sdxl.run(IMG2IMG, image_request(picture(256), strength=0.5, num_images=2), recorder(reports))
    assert reports == [(f"Image {n}/2 · {stage}", step, total) for n in (1, 2)
                       for stage, total in ((BASE, 2), (DECODE, 1)) for step in range(1, total + 1)]


def test_stop_keeps_the_images_already_finished(sdxl: SdxlBackend) -> None:
    job = text_request(num_images=3, seed=5, steps=2)

    def stop_in(image: int) -> Callable[[str, int, int], None]:
        def report(stage: str, step: int, total: int) -> None:
            if stage == f"Image {image}/3 · {BASE}" and step == 1:
                raise Cancelled("stopped")

        return report

    kept = sdxl.run(TEXT_TO_IMAGE, job, stop_in(2))
    whole = sdxl.run(TEXT_TO_IMAGE, job, lambda *_: None)
    assert len(kept.images) == 1 and kept.info["seeds"] == [5] and kept.info["num_images"] == 3
    assert np.array_equal(pixels(kept.images)[0], pixels(whole.images)[0])
    assert kept.info["notices"] == ["stopped after 1 of 3 images: the finished ones are kept"]
    with pytest.raises(Cancelled):  # nothing finished yet: nothing to keep
        sdxl.run(TEXT_TO_IMAGE, job, stop_in(1))
    assert all(sdxl.manager.component(name).in_use == 0 for name in sdxl.component_names())


def test_inpaint_keeps_the_input_exactly_outside_the_seam(sdxl: SdxlBackend) -> None:
    size, inner, blur = 256, (96, 160), sdxl.settings.mask_blur
    source = picture(size, seed=5)
    result = sdxl.run(INPAINT, image_request(source, square_mask(size, inner), strength=1.0), lambda *_: None)
    out, given = np.asarray(result.images[0]).astype(int), np.asarray(source).astype(int)
    seam = 3 * blur + 1  # PIL's Gaussian blur reaches about three radii
    inside = np.zeros((size, size), bool)
    inside[inner[0] - seam:inner[1] + seam, inner[0] - seam:inner[1] + seam] = True
    assert np.array_equal(out[~inside], given[~inside])
    core = slice(inner[0] + seam, inner[1] - seam)
    assert np.abs(out[core, core] - given[core, core]).mean() > 20  # the masked area was repainted
    assert result.info["mask_blur"] == blur and result.info["mask_fraction"] == pytest.approx(0.0625)


def test_img2img_that_runs_no_step_only_goes_through_the_vae(sdxl: SdxlBackend) -> None:
    reports: Reports = []
    result = sdxl.run(IMG2IMG, image_request(picture(256), strength=0.1), recorder(reports))
    assert reports == [(DECODE, 1, 1)] and result.info["base_steps"] == 0
    assert "text_encoder" not in result.info["timings"]  # no step, so no prompt to encode
    assert result.info["notices"] == ["strength 0.1 of 4 steps runs no denoising step: the picture only went "
                                      "through the VAE"]


def test_a_small_budget_places_one_component_at_a_time_with_the_same_result(sdxl_ctx: LoadContext) -> None:
    """On the CPU device a budget binds as on a GPU: the UNet evicts the text encoders, the VAE the UNet."""
    job = text_request(64, steps=2, options={"refiner": True, "high_noise_frac": 0.5})
    roomy = SdxlBackend(tiny_settings(), MemoryManager(FakeProbe(device_total=16 * GB), device="cpu"), sdxl_ctx)
    expected = roomy.run(TEXT_TO_IMAGE, job, lambda *_: None)
    sizes = {status.name: status.bytes for status in roomy.manager.statuses()}
    working = roomy.manager.largest_working()
    largest = max(sizes[UNET] + working[UNET], sizes[REFINER_UNET] + working[REFINER_UNET])
    budget = int(largest / (1 - RESERVE_FRACTION)) + 4096
    assert sizes[UNET] > sizes[REFINER_UNET] > sizes[TEXT_ENCODER_2] > sizes[TEXT_ENCODER]  # the real order
    manager = MemoryManager(FakeProbe(device_total=16 * GB), device="cpu", budget_bytes=budget)
    seen: dict[str, set[str]] = {}
    tight = SdxlBackend(tiny_settings(), manager, sdxl_ctx)
    result = tight.run(TEXT_TO_IMAGE, job, lambda stage, step, total: seen.setdefault(stage, placed(manager)))
    assert seen[BASE] >= {UNET} and not seen[BASE] & {TEXT_ENCODER, TEXT_ENCODER_2, REFINER_UNET}
    assert seen[REFINER] >= {REFINER_UNET} and UNET not in seen[REFINER]
    assert VAE in seen[DECODE] and UNET not in seen[DECODE]
    assert torch.equal(result.latents, expected.latents)
    assert np.array_equal(pixels(result.images), pixels(expected.images))


def test_offload_and_sequential_modes_give_the_same_images(sdxl: SdxlBackend, sdxl_ctx: LoadContext) -> None:
    job = image_request(picture(64), square_mask(64, (16, 48)), strength=0.8,
                        options={"refiner": True, "high_noise_frac": 0.7})
    expected = sdxl.run(INPAINT, job, lambda *_: None)
    for mode in ("offload", "sequential"):
        manager = MemoryManager(FakeProbe(device_total=16 * GB), device="cpu")
        backend = SdxlBackend(tiny_settings(), manager, sdxl_ctx)
        result = manager.run(lambda: backend.run(INPAINT, job, lambda *_: None), mode=mode)
        assert np.array_equal(pixels(result.images), pixels(expected.images)), mode
        assert placed(manager) == set(), mode  # nothing stays on the device between stages


def test_the_registry_serves_sdxl_from_the_tiny_preset(sdxl_ctx: LoadContext) -> None:
    registry = Registry(load_preset("tiny").settings, MemoryManager(FakeProbe(device_total=16 * GB)), sdxl_ctx,
                        FAMILIES)
    assert registry.spec_for_task(TEXT_TO_IMAGE).name == "sdxl"
    request = SdImageRequest.img2img(picture(300), "a red house", "", 0.5, 0, 0, 4, "", offered=["sdxl"],
                                     default_model="sdxl", sampling={"steps": 2, "guidance": 1.0}, area=256 * 256)
    result = registry.run(IMG2IMG, request, lambda *_: None)
    assert result.images[0].size == (request.width, request.height) == (256, 256) and result.info["seed"] == 4
    assert result.info["notices"] == list(request.notices)  # the request's own notices reach the info
    assert {s.name for s in registry.manager.statuses()} >= {UNET, VAE, TEXT_ENCODER, TEXT_ENCODER_2}


def test_a_float16_vae_decodes_on_float32_weights_and_stays_float16(sdxl: SdxlBackend) -> None:
    """SDXL's VAE overflows in float16: the pipelines upcast it (``force_upcast``), and so do we, on copies."""
    with sdxl.manager.use(VAE) as module:
        half = replace_dtype(module, torch.float16)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float16)
    assert vae.decode_upcast(half) and vae.encode_upcast(half)
    ours = vae.decode(half, latents, torch.device("cpu"))
    reference = replace_dtype(half, torch.float32).decode(latents.float() / half.config.scaling_factor).sample
    assert ours.dtype == torch.float32 and torch.equal(ours, reference)
    assert {p.dtype for p in half.parameters()} == {torch.float16}  # the manager's module is left as it was


def test_pipelines_compute_on_the_manager_s_device_whatever_their_weights_say(sdxl: SdxlBackend) -> None:
    """A streamed component keeps its weights in RAM; the pipeline must still put its inputs on the device."""
    parts = replace(sdxl.parts(), device=torch.device("cuda", 3))
    pipe = make(TextToImage, parts, refiner=False)
    assert pipe._execution_device == torch.device("cuda", 3)
    assert pipe.vae.device.type == "meta" and pipe.config.force_zeros_for_empty_prompt is True


def replace_dtype(module: Any, dtype: torch.dtype) -> Any:
    import copy

    return copy.deepcopy(module).to(dtype)


def test_an_image_request_keeps_its_size(sdxl: SdxlBackend) -> None:
    source = Image.fromarray(np.full((64, 128, 3), 90, np.uint8))
    result = sdxl.run(IMG2IMG, image_request(source, steps=2), lambda *_: None)
    assert result.images[0].size == (128, 64) and result.latents.shape == (1, 4, 8, 16)
    assert result.info["input_size"] == [128, 64] and "vae_encode" in result.info["timings"]


def test_the_refiner_is_fetched_only_when_a_job_asks_for_it(sdxl_ctx: LoadContext, tmp_path: Path) -> None:
    """The preset's plan leaves the refiner out; a refiner job fetches it first (offline: says what is missing)."""
    from backends.runtime.errors import ModelUnavailable
    from backends.runtime.loading import Source

    real_refiner = Source("stabilityai/stable-diffusion-xl-refiner-1.0", "unet", "fp16")
    settings = tiny_settings(refiner_unet=real_refiner)
    assert settings.unused_sources() == ("refiner_unet",)
    assert replace(settings, defaults=replace(settings.defaults, refiner=True)).unused_sources() == ()
    offline = replace(sdxl_ctx, models_dir=tmp_path / "hub")
    backend = SdxlBackend(settings, MemoryManager(FakeProbe(device_total=16 * GB), device="cpu"), offline)
    assert backend.run(TEXT_TO_IMAGE, text_request(steps=2), lambda *_: None).images  # no refiner, no fetch
    with pytest.raises(ModelUnavailable, match=r"sdxl\.refiner_unet weights \(fp16\) in unet/"):
        backend.run(TEXT_TO_IMAGE, text_request(steps=2, options={"refiner": True}), lambda *_: None)
    assert {s.name: s.placement for s in backend.manager.statuses()}[REFINER_UNET] == "disk"
