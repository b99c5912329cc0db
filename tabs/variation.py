"""Variation / img2img tab: Stable Cascade from an input image, in two modes.

- **Variations** (``/image_variation``): new images like the input; its CLIP image embedding
  conditions stage C, with an optional prompt.
- **img2img** (``/img2img``): the input's stage C latent noised by ``strength`` (0 keeps the image,
  1 ignores it) and denoised again with the prompt.

Each mode has its own Generate button, so each API event takes exactly DESIGN.md's inputs in order.
The input is a ``gr.File`` of image type with a preview beside it, not a ``gr.Image``: Gradio 6.31's
``gr.Image`` decodes every upload before the handler runs (even with ``type="filepath"``), so an
unreadable or oversized file would fail inside Gradio with a message that names no field. With a
file input, ``backends.runtime.image_input`` checks it and says what is wrong, twice: when the file is
chosen (the preview warns, naming the field, and the file is taken back out) and again when a job
starts. The public endpoints go one step further and read the picture from a hidden JSON input
(``tabs.common`` explains why), so even a plain path or a number sent for ``image`` gets an answer
naming the field.

Images and strength are sliders on screen, where their ranges are fixed. Gradio checks a slider's
range itself, with a message that names no field, so the public endpoints read those two from
hidden ``gr.Number`` twins instead and our validation answers API clients as before; the tab's own
buttons run private events. Width and height stay numbers: 0 means "from the input's aspect ratio"
(``fit_output_size``). Sampling steps and guidance come from the preset (the Image tab's defaults).

The buttons sit right under the prompt, before the settings, so a phone shows them on its first
screen; results are shown whole (``object_fit="contain"``), since they follow the input's aspect.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
from gradio.data_classes import FileDataDict
from PIL import Image

from backends.cascade.requests import (
    MAX_IMAGES,
    MAX_SIZE,
    MIN_SIZE,
    SIZE_MULTIPLE,
    ImageVariationRequest,
    Img2ImgRequest,
)
from backends.runtime.errors import InputError
from backends.runtime.image_input import load_image
from backends.runtime.studio import Studio
from tabs import sd, sd_edit
from tabs.common import (
    GPU_QUEUE,
    api_endpoint,
    api_file_input,
    labelled,
    on_gpu,
    on_page_load,
    picture_file,
    standalone,
    uploaded_path,
    user_errors,
    wire_stop,
)
from tabs.streaming import image_job, wire_result_restore, wire_selection

logger = logging.getLogger(__name__)

#: Results the "Recent outputs" gallery shows, newest first.
RECENT = 12
#: Saved PNGs looked at to find them: the Image tab's results share the outputs folder.
RECENT_SCAN = 200
#: The tasks whose results this tab lists (the ``task`` in each PNG's ``studio`` chunk).
TASKS = ("image_variation", "img2img", "sd3_img2img", "sd3_inpaint", "sdxl_img2img", "sdxl_inpaint")


def _sampling(studio: Studio) -> tuple[dict[str, Any], int]:
    """The preset's sampling defaults and default output area (for sizes taken from the input)."""
    d = studio.preset.settings.cascade.defaults
    sampling = {"prior_steps": d.prior_steps, "decoder_steps": d.decoder_steps,
                "prior_guidance": d.prior_guidance, "decoder_guidance": d.decoder_guidance}
    return sampling, d.width * d.height


def _seconds(studio: Studio, width: Any, height: Any, images: Any) -> int:
    """ZeroGPU duration: as the Image tab's estimate (cold load + 0.25 s a step per megapixel and
    image), with the preset's steps; a size of 0 counts as the default area."""
    sampling, area = _sampling(studio)
    try:
        pixels = float(width) * float(height) or float(area)
        count = max(1.0, float(images))
    except (TypeError, ValueError):
        return 60  # invalid input fails fast in the handler; any duration will do
    steps = sampling["prior_steps"] + sampling["decoder_steps"]
    return int(min(300, max(30, 30 + 0.25 * steps * pixels / 2**20 * count)))


def variation(studio: Studio, inputs: list[Any], previews: Any, request: gr.Request | None,
              progress: gr.Progress) -> Iterator[tuple[Any, Any]]:
    """Validate, run an image variation (streaming previews when asked), save, yield gallery + info."""
    sampling, area = _sampling(studio)
    yield from image_job(studio, "image_variation",
                         lambda: ImageVariationRequest.build(*inputs, area=area, sampling=sampling),
                         previews, request, progress, what="Image variation")


def img2img(studio: Studio, inputs: list[Any], previews: Any, request: gr.Request | None,
            progress: gr.Progress) -> Iterator[tuple[Any, Any]]:
    """Validate, run img2img (streaming previews when asked), save, yield gallery + info."""
    sampling, area = _sampling(studio)
    yield from image_job(studio, "img2img", lambda: Img2ImgRequest.build(*inputs, area=area, sampling=sampling),
                         previews, request, progress, what="img2img")


def preview(path: Any) -> tuple[str | None, Any]:
    """The chosen picture as the models will see it (upright, RGB, transparency on white).

    A file that cannot be used is refused at once: a warning naming the field, no preview, and
    the file taken back out of the input, so the user picks another (the tab stays usable).

    Returns:
        The preview's file (``common.picture_file``; None for no file), and the input's new
        value (``gr.skip()`` to keep it).
    """
    if path is None:
        return None, gr.skip()

    def read() -> Image.Image | None:
        try:
            return load_image("image", path).image
        except InputError as error:  # the user's to fix: say so now, naming the field
            gr.Warning(labelled(error))
            return None

    picture = user_errors("Input preview", read)
    return picture_file(picture), (gr.skip() if picture is not None else None)


def _task_of(path: Path) -> str | None:
    """The task a saved PNG came from (its ``studio`` text chunk); None if it carries none."""
    try:
        with Image.open(path) as png:  # text chunks come before the pixels: nothing is decoded
            meta = json.loads(str(png.info.get("studio", "{}")))
    except (OSError, ValueError) as error:  # removed meanwhile, or not one of ours
        logger.debug("recent outputs: skipping %s (%s)", path.name, error)
        return None
    return meta.get("task") if isinstance(meta, dict) else None


def recent_results(studio: Studio) -> list[str]:
    """This tab's saved results (variations and img2img), newest first."""
    kept: list[str] = []
    for path in studio.outputs.recent(limit=RECENT_SCAN):
        if _task_of(path) in TASKS:
            kept.append(str(path))
            if len(kept) == RECENT:
                break
    return kept


def build(studio: Studio) -> dict[str, Any]:
    """Build the tab's components and wire its events (call inside a ``gr.Blocks``).

    Returns the handles ``app.py`` wires to other tabs: ``image`` (the input "Send to Variation /
    img2img" fills), ``prompt`` (the prompt box, so that a sent picture can bring its prompt),
    ``selected_image`` (a State with the picked result's path: the first by default, then the
    one clicked in the gallery) and ``send_row`` (under the gallery, where "Send to …" buttons go).
    """
    defaults = studio.preset.settings.cascade.defaults
    size_info = f"0 = from the input's aspect ratio; else {MIN_SIZE}–{MAX_SIZE}, multiple of {SIZE_MULTIPLE}"
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                # min_width 120 (not 160) keeps the two side by side on a phone.
                image = gr.File(label="Input picture", file_types=["image"], type="filepath", height=160,
                                min_width=120, elem_id="variation-image")
                shown = gr.Image(label="Input preview", type="pil", interactive=False, height=160,
                                 min_width=120, elem_id="variation-input-preview")
            prompt = gr.Textbox(label="Prompt", lines=2,
                                placeholder="Optional for variations; describes the result for img2img")
            with gr.Tabs():
                with gr.Tab("Variations", id="variations"):
                    num_images = gr.Slider(1, MAX_IMAGES, value=defaults.num_images, step=1, label="Images")
                    run_variation = gr.Button("Generate variations", variant="primary",
                                              elem_id="variation-generate")
                with gr.Tab("img2img", id="img2img"):
                    strength = gr.Slider(0, 1, value=defaults.strength, step=0.01, label="Strength",
                                         info="0 keeps the image, 1 ignores it")
                    run_img2img = gr.Button("Generate img2img", variant="primary", elem_id="img2img-generate")
                    run_sd_img2img = gr.Button("Generate img2img", variant="primary", visible=False,
                                               elem_id="img2img-sd-generate")
                inpaint = sd_edit.build_inpaint_tab(studio)
            # Under the buttons, not above them: on a phone they must stay on the first screen.
            models = sd.choices(studio)
            model = gr.Dropdown(models, value=sd.CASCADE, label="Model for img2img", visible=len(models) > 1,
                                elem_id="variation-model",
                                info="Variations are Stable Cascade's; inpainting needs an SD model")
            sd_controls = sd.build_controls("variation")
            stop = gr.Button("Stop", variant="stop", elem_id="variation-stop")
            negative = gr.Textbox(label="Negative prompt", value=defaults.negative_prompt, lines=1)
            with gr.Accordion("Size", open=False):
                with gr.Row():
                    width = gr.Number(value=0, label="Width", info=size_info)
                    height = gr.Number(value=0, label="Height", info=size_info)
            with gr.Row():
                seed = gr.Number(value=-1, label="Seed", info="-1 picks a random seed", scale=3)
                random_seed = gr.Button("Random", scale=1, size="sm")
                reuse_seed = gr.Button("Reuse last", scale=1, size="sm")
            previews_box = gr.Checkbox(value=False, label="Live previews",
                                       info="Show stage C's progress as small previews (slightly slower)")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Result", columns=2, height=512, object_fit="contain",
                                 elem_id="variation-gallery", format="png")
            # app.py adds one "Send to …" button here for each tab that takes an image.
            send_row = gr.Row(elem_id="variation-send")
            info = gr.JSON(label="Info (seed used, input fits, timings, preset, model)")
    with gr.Accordion("Recent outputs", open=False):
        history = gr.Gallery(label="Recent", columns=6, height=240, show_label=False, object_fit="contain",
                             elem_id="variation-history")
    # Filled at every page load, so the history is fresh after a restart.
    on_page_load(lambda: recent_results(studio), history)
    last_seed = gr.State(value=None)
    previews = gr.State(value=False)  # the switch, as an input that API calls do not see
    # What the public endpoints read instead of the sliders (see the module docstring).
    api_num_images = gr.Number(value=defaults.num_images, label="Images", info=f"1–{MAX_IMAGES}", visible=False)
    api_strength = gr.Number(value=defaults.strength, label="Strength",
                             info="0–1: 0 keeps the image, 1 ignores it", visible=False)

    # Queued: gradio shows gr.Warning only from queued events; in its own group, never behind a job.
    image.change(preview, image, [shown, image], api_visibility="private", concurrency_limit=None,
                 show_progress="minimal")
    previews_box.change(lambda on: on, previews_box, previews, api_visibility="private", queue=False)
    random_seed.click(lambda: -1, None, seed, api_visibility="private", queue=False)
    reuse_seed.click(lambda last: -1 if last is None else last, last_seed, seed,
                     api_visibility="private", queue=False)

    # Parameter names are the contract's: API clients may pass them as keywords.
    def variation_handler(image: Any, prompt: Any, negative_prompt: Any, width: Any, height: Any,
                          num_images: Any, seed: Any, show_previews: Any, request: gr.Request,
                          progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, Any]]:
        inputs = [image, prompt, negative_prompt, width, height, num_images, seed]
        yield from variation(studio, inputs, show_previews, request, progress)

    def img2img_handler(image: Any, prompt: Any, negative_prompt: Any, strength: Any, width: Any,
                        height: Any, seed: Any, show_previews: Any, request: gr.Request,
                        progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, Any]]:
        inputs = [image, prompt, negative_prompt, strength, width, height, seed]
        yield from img2img(studio, inputs, show_previews, request, progress)

    def variation_seconds(image: Any, prompt: Any, negative_prompt: Any, width: Any, height: Any,
                          num_images: Any, *_: Any, **__: Any) -> int:
        return _seconds(studio, width, height, num_images)

    def img2img_seconds(image: Any, prompt: Any, negative_prompt: Any, strength: Any, width: Any,
                        height: Any, *_: Any, **__: Any) -> int:
        return _seconds(studio, width, height, 1)

    events = [
        run_variation.click(on_gpu(variation_handler, variation_seconds),
                            [image, prompt, negative, width, height, num_images, seed, previews],
                            [gallery, info], api_visibility="private", **GPU_QUEUE),
        run_img2img.click(on_gpu(img2img_handler, img2img_seconds),
                          [image, prompt, negative, strength, width, height, seed, previews],
                          [gallery, info], api_visibility="private", **GPU_QUEUE),
    ]
    for event in events:
        event.then(lambda data: (data or {}).get("seed"), info, last_seed, api_visibility="private", queue=False)
        event.then(lambda: recent_results(studio), None, history, api_visibility="private", queue=False)

    # The public endpoints read the picture from a hidden JSON input (tabs.common explains why)
    # and run without previews.
    def image_variation(image: FileDataDict | None, prompt: Any, negative_prompt: Any, width: Any, height: Any,
                        num_images: Any, seed: Any, request: gr.Request,
                        progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, Any]]:
        """New images like a given picture, with Stable Cascade: the picture's look (CLIP embedding) guides stage C.

        The result shares the picture's subject and style, not its layout; an optional prompt steers it. Runs
        on this machine's GPU, one job at a time; steps and guidance are the server preset's.

        Args:
            image: the picture: an http(s) URL or a data:image/png;base64,... string (PNG, JPEG or WebP, 32 px+).
            prompt: optional text that steers the variations (text past 4000 characters is cut).
            negative_prompt: what to steer away from; empty for nothing.
            width: output width in pixels, a multiple of 128 from 256 to 2048, or 0 to follow the picture's aspect.
            height: output height in pixels, a multiple of 128 from 256 to 2048, or 0 to follow the picture's aspect.
            num_images: how many variations, 1 to 4; variation i is made with seed + i.
            seed: 0 to 4294967295 for a repeatable result, or -1 for a random seed (the info gives the one used).

        Returns:
            The images (PNG files, each with its URL) and an info JSON: seed used, output size, timings, notices.
        """
        path = user_errors("Image variation", lambda: uploaded_path("image", image))
        yield from variation(studio, [path, prompt, negative_prompt, width, height, num_images, seed], False,
                             request, progress)

    def img2img_api(image: FileDataDict | None, prompt: Any, negative_prompt: Any, strength: Any, width: Any,
                    height: Any, seed: Any, request: gr.Request,
                    progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, Any]]:
        """Redraw a picture to match a prompt (img2img) with Stable Cascade, keeping as much of it as strength says.

        The picture is scaled to cover the output size and centre-cropped (the info says how much was cut).
        One image a call; steps and guidance are the server preset's. Runs on this machine's GPU, one job at a time.

        Args:
            image: the picture: an http(s) URL or a data:image/png;base64,... string (PNG, JPEG or WebP, 32 px+).
            prompt: what the result should show (text past 4000 characters is cut).
            negative_prompt: what to steer away from; empty for nothing.
            strength: 0 to 1, how much is redrawn (0.8 is the official default); 0 keeps the picture, 1 ignores it.
            width: output width in pixels, a multiple of 128 from 256 to 2048, or 0 to follow the picture's aspect.
            height: output height in pixels, a multiple of 128 from 256 to 2048, or 0 to follow the picture's aspect.
            seed: 0 to 4294967295 for a repeatable result, or -1 for a random seed (the info gives the one used).

        Returns:
            The image (a PNG file with its URL) and an info JSON: seed used, output size, timings, notices.
        """
        path = user_errors("img2img", lambda: uploaded_path("image", image))
        yield from img2img(studio, [path, prompt, negative_prompt, strength, width, height, seed], False,
                           request, progress)

    sd_events = sd_edit.wire(studio, model, image, dict(prompt=prompt, negative=negative, strength=strength,
                                                        width=width, height=height, seed=seed),
                             (run_img2img, run_sd_img2img), inpaint, sd_controls, [gallery, info])
    for event in sd_events:
        event.then(lambda data: (data or {}).get("seed"), info, last_seed, api_visibility="private", queue=False)
        event.then(lambda: recent_results(studio), None, history, api_visibility="private", queue=False)
    selected = wire_selection([*events, *sd_events[:2]], gallery, info)
    api_image = api_file_input("image")
    events += [
        api_endpoint(image_variation, variation_seconds,
                     [api_image, prompt, negative, width, height, api_num_images, seed], [gallery, info],
                     "image_variation"),
        api_endpoint(img2img_api, img2img_seconds,
                     [api_image, prompt, negative, api_strength, width, height, seed], [gallery, info], "img2img"),
    ]
    wire_stop(studio, stop, [*events, *sd_events], keep_finished=True)
    wire_result_restore([*events[:2], *sd_events[:2]], gallery, info)  # the tab's own buttons
    return {"image": image, "prompt": prompt, "selected_image": selected, "send_row": send_row}


def demo(studio: Studio) -> gr.Blocks:
    """This tab alone, for a quick look: ``demo(studio).launch()``."""
    return standalone(build, studio, "Cascade Studio: Variation / img2img")
