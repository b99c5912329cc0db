"""The SD side of the Variation / img2img tab: img2img and inpainting with SD3.5 or SDXL.

The tab's model selector picks what img2img runs on (Stable Cascade or an SD model); variations
stay Stable Cascade's (SD has no image-embedding variation). Inpainting is an SD task: with Stable
Cascade selected it runs on the preset's default SD model, and its button says which.

The mask is drawn on the input picture in a ``gr.ImageEditor`` (white brush; every painted pixel
is repainted) or uploaded as a file (white = repaint), which wins when both are given. The
picture itself is always the tab's input file, so the editor is a drawing surface only: it is
refilled whenever the input changes. Public endpoints: ``/img2img_sd`` and ``/inpaint``, in
DESIGN.md's order, with the picture and the mask read from hidden JSON inputs and strength from
a hidden number (``tabs.variation`` explains both).
"""

from __future__ import annotations

from typing import Any, Iterator

import gradio as gr
from gradio.data_classes import FileDataDict

from backends.runtime.errors import InputError
from backends.runtime.image_input import load_image
from backends.runtime.studio import Studio
from tabs import sd
from tabs.common import GPU_QUEUE, api_endpoint, api_file_input, on_gpu, uploaded_path, user_errors


def inpaint_label(studio: Studio, model: str) -> str:
    """The Inpaint button's text: which model will repaint (Cascade has no inpainting)."""
    chosen = model if model in sd.offered(studio) else studio.registry.default_model()
    return f"Inpaint with {sd.LABELS.get(chosen, chosen)}"


def editor_value(path: Any) -> Any:
    """The editor's value for a newly chosen input: that picture as the background, nothing painted."""
    if not path:
        return None
    try:
        picture = load_image("image", path).image
    except InputError:
        return None  # the preview has said what is wrong with the file
    return {"background": picture, "layers": [], "composite": picture}


def build_inpaint_tab(studio: Studio) -> dict[str, Any]:
    """The Inpaint sub-tab's widgets (call inside the tab's ``gr.Tabs``)."""
    default = studio.registry.default_model()
    strength = sd.model_defaults(studio, default).strength if default else 0.8
    with gr.Tab("Inpaint", id="inpaint", visible=bool(default)):
        editor = gr.ImageEditor(label="Paint the area to repaint", type="pil", sources=(), height=360,
                                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=32),
                                eraser=gr.Eraser(default_size=32), layers=False, elem_id="inpaint-editor")
        mask_file = gr.File(label="Or upload a mask (white = repaint)", file_types=["image"], type="filepath",
                            height=100, elem_id="inpaint-mask-file")
        inpaint_strength = gr.Slider(0, 1, value=strength, step=0.01, label="Strength",
                                     info="How far the painted area is re-noised: 1 repaints it from scratch")
        run = gr.Button(inpaint_label(studio, sd.CASCADE), variant="primary", elem_id="inpaint-generate")
    return {"editor": editor, "mask_file": mask_file, "strength": inpaint_strength, "run": run}


def wire(studio: Studio, model: gr.Dropdown, image: gr.File, fields: dict[str, Any], img2img_buttons: tuple[Any, Any],
         inpaint: dict[str, Any], controls: sd.SdControls, outputs: list[Any]) -> list[Any]:
    """Wire the selector, the editor refill, the SD buttons and ``/img2img_sd`` and ``/inpaint``.

    Args:
        fields: the tab's ``prompt``, ``negative``, ``strength`` (img2img's), ``width``, ``height``, ``seed``.
        img2img_buttons: Stable Cascade's img2img button and the SD one; one shows at a time.
        inpaint: ``build_inpaint_tab``'s widgets.

    Returns:
        The SD events: the UI's two, then the two public endpoints.
    """
    cascade_button, sd_button = img2img_buttons
    prompt, negative, strength = fields["prompt"], fields["negative"], fields["strength"]
    width, height, seed = fields["width"], fields["height"], fields["seed"]

    def switch(chosen: str) -> dict[Any, Any]:
        on = chosen in sd.offered(studio)
        updates = {cascade_button: gr.update(visible=not on), sd_button: gr.update(visible=on),
                   inpaint["run"]: gr.update(value=inpaint_label(studio, chosen))}
        updates.update(sd.on_model(studio, chosen, controls))
        return updates

    model.input(switch, model, [cascade_button, sd_button, inpaint["run"], controls.group, controls.steps,
                                controls.guidance, *controls.extras, controls.license],
                api_visibility="private", queue=False)
    image.change(editor_value, image, inpaint["editor"], api_visibility="private", queue=False)

    def chosen_model(value: Any) -> str:
        return value if value in sd.offered(studio) else ""

    def img2img_ui(image: Any, prompt: Any, negative_prompt: Any, strength: Any, width: Any, height: Any,
                   seed: Any, model: Any, steps: Any, guidance: Any, max_sequence_length: Any, refiner: Any,
                   high_noise_frac: Any, request: gr.Request,
                   progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, Any]]:
        options = sd.options_from(studio, model, max_sequence_length, refiner, high_noise_frac)
        yield from sd.img2img(studio, [image, prompt, negative_prompt, strength, width, height, seed, model],
                              options, request, progress, {"steps": steps, "guidance": guidance})

    def inpaint_ui(image: Any, editor: Any, mask_file: Any, prompt: Any, negative_prompt: Any, strength: Any,
                   seed: Any, model: Any, steps: Any, guidance: Any, max_sequence_length: Any, refiner: Any,
                   high_noise_frac: Any, request: gr.Request,
                   progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, Any]]:
        on = model in sd.offered(studio)
        mask = mask_file or sd.drawn_mask(editor)
        options = sd.options_from(studio, model, max_sequence_length, refiner, high_noise_frac) if on else {}
        yield from sd.inpaint(studio, [image, mask, prompt, negative_prompt, strength, seed, chosen_model(model)],
                              options, request, progress, {"steps": steps, "guidance": guidance} if on else None)

    def img2img_sd(image: FileDataDict | None, prompt: Any, negative_prompt: Any, strength: Any, width: Any,
                   height: Any, seed: Any, model: Any, request: gr.Request,
                   progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, Any]]:
        """Redraw a picture to match a prompt (img2img) with SD3.5 or SDXL, keeping as much of it as strength says.

        The picture is scaled to cover the output size and centre-cropped. One image a call; steps and guidance
        are the chosen model's preset defaults. Runs on this machine's GPU, one job at a time.

        Args:
            image: the picture: an http(s) URL or a data:image/png;base64,... string (PNG, JPEG or WebP, 32 px+).
            prompt: what the result should show (must not be empty; text past 4000 characters is cut).
            negative_prompt: what to steer away from; empty for nothing.
            strength: 0 to 1, how much is redrawn (0.8 by default); 0 keeps the picture, 1 ignores it.
            width: output width in pixels, a multiple of 64 from 256 to 2048, or 0 to follow the picture's aspect.
            height: output height in pixels, a multiple of 64 from 256 to 2048, or 0 to follow the picture's aspect.
            seed: 0 to 4294967295 for a repeatable result, or -1 for a random seed (the info gives the one used).
            model: sd3.5-large, sd3.5-large-turbo, sd3.5-medium or sdxl, if this server offers it; "" for its default.

        Returns:
            The image (a PNG file with its URL) and an info JSON: seed used, model, output size, timings, notices.
        """
        path = user_errors("img2img", lambda: uploaded_path("image", image))
        yield from sd.img2img(studio, [path, prompt, negative_prompt, strength, width, height, seed, model], {},
                              request, progress)

    def inpaint_api(image: FileDataDict | None, mask: FileDataDict | None, prompt: Any, negative_prompt: Any,
                    strength: Any, seed: Any, model: Any, request: gr.Request,
                    progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, Any]]:
        """Repaint part of a picture (inpainting) with SD3.5 or SDXL: only where the mask is white, to match a prompt.

        The output keeps the picture's size when both sides are multiples of 64 from 256 to 2048, else the nearest
        such size. Steps and guidance are the chosen model's preset defaults. Runs on this machine's GPU.

        Args:
            image: the picture: an http(s) URL or a data:image/png;base64,... string (PNG, JPEG or WebP, 32 px+).
            mask: a URL or data: string as for image, the picture's size: white (opaque, in an RGBA PNG) = repaint.
            prompt: what the repainted area should show (must not be empty; text past 4000 characters is cut).
            negative_prompt: what to steer away from; empty for nothing.
            strength: 0 to 1, how much the masked area is redrawn (0.8 by default); 1 ignores what was there.
            seed: 0 to 4294967295 for a repeatable result, or -1 for a random seed (the info gives the one used).
            model: sd3.5-large, sd3.5-large-turbo, sd3.5-medium or sdxl, if this server offers it; "" for its default.

        Returns:
            The image (a PNG file with its URL) and an info JSON: seed used, model, size, mask share, timings.
        """
        paths = user_errors("Inpaint", lambda: (uploaded_path("image", image), uploaded_path("mask", mask)))
        yield from sd.inpaint(studio, [paths[0], paths[1], prompt, negative_prompt, strength, seed, model], {},
                              request, progress)

    def img2img_seconds(image: Any, prompt: Any, negative: Any, strength: Any, width: Any, height: Any,
                        *_: Any, **__: Any) -> int:
        size = picture_size(image)
        return sd.seconds(width or size[0], height or size[1], 40)

    def inpaint_seconds(image: Any, *_: Any, **__: Any) -> int:
        return sd.seconds(*picture_size(image), 40)  # the output keeps the picture's size

    sampling = [controls.steps, controls.guidance, *controls.extras]
    events = [
        sd_button.click(on_gpu(img2img_ui, img2img_seconds),
                        [image, prompt, negative, strength, width, height, seed, model, *sampling], outputs,
                        api_visibility="private", **GPU_QUEUE),
        inpaint["run"].click(on_gpu(inpaint_ui, inpaint_seconds),
                             [image, inpaint["editor"], inpaint["mask_file"], prompt, negative, inpaint["strength"],
                              seed, model, *sampling], outputs, api_visibility="private", **GPU_QUEUE),
    ]
    api_image, api_mask = api_file_input("image"), api_file_input("mask")
    api_strength = gr.Number(value=0.8, label="Strength", info="0–1", visible=False)
    api_model = gr.Textbox(value="", label="model", visible=False)
    events += [
        api_endpoint(img2img_sd, img2img_seconds,
                     [api_image, prompt, negative, api_strength, width, height, seed, api_model], outputs,
                     "img2img_sd"),
        api_endpoint(inpaint_api, inpaint_seconds,
                     [api_image, api_mask, prompt, negative, api_strength, seed, api_model], outputs, "inpaint"),
    ]
    return events


def picture_size(value: Any) -> tuple[int, int]:
    """The size of an uploaded picture (a path, or gradio's file dict), for a ZeroGPU duration.

    Reads the file's header only. 1024² when there is no readable picture: the handler refuses
    that input at once, so any duration will do.
    """
    from PIL import Image

    path = value.get("path") if isinstance(value, dict) else value
    try:
        with Image.open(path) as picture:
            return picture.size
    except (OSError, TypeError, ValueError, AttributeError):
        return 1024, 1024

