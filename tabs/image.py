"""Image tab: Stable Cascade text-to-image.

The ``/generate_image`` event takes exactly DESIGN.md's inputs, in order. Numeric inputs are plain
``gr.Number`` fields: Gradio's own range checks (on sliders, or numbers with bounds) reject bad
values with a message that does not name the field, so ours do the checking instead. The live
previews switch reaches the handler as a ``gr.State``, which is not an API input: API calls run
without previews and get the final gallery and info only.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator

import gradio as gr

from backends.cascade.requests import MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE, TextToImageRequest
from backends.runtime.studio import Studio
from tabs.common import GPU_QUEUE, on_gpu, on_page_load, standalone, wire_stop
from tabs.streaming import image_job, wire_result_restore

logger = logging.getLogger(__name__)

ASPECTS = {"1:1": 1.0, "4:3": 4 / 3, "3:4": 3 / 4, "3:2": 3 / 2, "2:3": 2 / 3, "16:9": 16 / 9,
           "9:16": 9 / 16, "21:9": 21 / 9}


def aspect_size(ratio: float, base: int) -> tuple[int, int]:
    """Width and height near ``base``² pixels with this aspect, in multiples of 128."""

    def snap(value: float) -> int:
        return int(min(max(round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE, MIN_SIZE), MAX_SIZE))

    return snap(base * math.sqrt(ratio)), snap(base / math.sqrt(ratio))


def aspect_choices(base: int) -> list[str]:
    return [f"{name} ({w}×{h})" for name, ratio in ASPECTS.items() for w, h in [aspect_size(ratio, base)]]


def generate(studio: Studio, inputs: list[Any], previews: Any, request: gr.Request | None,
             progress: gr.Progress) -> Iterator[tuple[Any, Any]]:
    """Validate, run text-to-image (streaming previews when asked), save atomically, yield gallery + info."""
    yield from image_job(studio, "text_to_image", lambda: TextToImageRequest.build(*inputs), previews,
                         request, progress, what="Image generation")


def gpu_seconds(prompt: Any, negative: Any, width: Any, height: Any, prior_steps: Any,
                decoder_steps: Any, prior_guidance: Any, decoder_guidance: Any, num_images: Any,
                *_: Any, **__: Any) -> int:
    """ZeroGPU duration for one request: a cold model load plus the steps, scaled by pixels.

    On an H100 the full bf16 model does 20 + 10 steps at 1024² in about 4 s (anchor figures), so
    0.25 s a step per megapixel and image leaves room for slower slices; loading the weights
    from the Space's disk takes up to ~30 s the first time.
    """
    try:
        steps = float(prior_steps) + float(decoder_steps)
        megapixels = float(width) * float(height) / 2**20
        images = max(1.0, float(num_images))
    except (TypeError, ValueError):
        return 60  # invalid input fails fast in the handler; any duration will do
    return int(min(300, max(30, 30 + 0.25 * steps * megapixels * images)))


def recent_images(studio: Studio) -> list[str]:
    return [str(p) for p in studio.outputs.recent(limit=12)]


def build(studio: Studio) -> dict[str, Any]:
    """Build the tab's components and wire its events (call inside a ``gr.Blocks``).

    Returns the handles other tabs are wired to by ``app.py``: ``selected_image`` (a State with
    the picked result's path) and ``send_row`` (where "Send to …" buttons go).
    """
    defaults = studio.preset.settings.cascade.defaults
    base = defaults.width
    choices = aspect_choices(base)
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="A lighthouse on a cliff at dawn, oil painting")
            negative = gr.Textbox(label="Negative prompt", value=defaults.negative_prompt, lines=1)
            aspect = gr.Radio(choices, value=choices[0], label="Aspect ratio")
            with gr.Accordion("Advanced", open=False):
                with gr.Row():
                    width = gr.Number(value=defaults.width, label="Width", info=f"{MIN_SIZE}–{MAX_SIZE}, multiple of {SIZE_MULTIPLE}")
                    height = gr.Number(value=defaults.height, label="Height", info=f"{MIN_SIZE}–{MAX_SIZE}, multiple of {SIZE_MULTIPLE}")
                    num_images = gr.Number(value=defaults.num_images, label="Images", info="1–4")
                with gr.Row():
                    prior_steps = gr.Number(value=defaults.prior_steps, label="Stage C steps", info="1–100")
                    decoder_steps = gr.Number(value=defaults.decoder_steps, label="Stage B steps", info="1–50")
                with gr.Row():
                    prior_guidance = gr.Number(value=defaults.prior_guidance, label="Stage C guidance", info="0–20")
                    decoder_guidance = gr.Number(value=defaults.decoder_guidance, label="Stage B guidance", info="0–20; 0 is fastest")
            with gr.Row():
                seed = gr.Number(value=-1, label="Seed", info="-1 picks a random seed", scale=3)
                random_seed = gr.Button("Random", scale=1, size="sm")
                reuse_seed = gr.Button("Reuse last", scale=1, size="sm")
            previews_box = gr.Checkbox(value=False, label="Live previews",
                                       info="Show stage C's progress as small previews (slightly slower)")
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="image-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="image-stop")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Result", columns=2, height=512, elem_id="image-gallery",
                                 format="png")
            # app.py adds one "Send to …" button here for each tab that takes an image.
            send_row = gr.Row(elem_id="image-send")
            info = gr.JSON(label="Info (seed used, timings, preset, model)")
    with gr.Accordion("Recent outputs", open=False):
        history = gr.Gallery(label="Recent", columns=6, height=240, show_label=False, elem_id="image-history")
    # Filled at every page load, so the history is fresh after a restart.
    on_page_load(lambda: recent_images(studio), history)
    last_seed = gr.State(value=None)
    selected = gr.State(value=None)  # path of the result image the user picked (first by default)
    previews = gr.State(value=False)  # the switch, as an input that API calls do not see
    previews_box.change(lambda on: on, previews_box, previews, api_visibility="private", queue=False)

    def on_aspect(choice: str) -> tuple[int, int]:
        name = choice.split(" ")[0]
        return aspect_size(ASPECTS.get(name, 1.0), base)

    aspect.change(on_aspect, aspect, [width, height], api_visibility="private", queue=False)
    random_seed.click(lambda: -1, None, seed, api_visibility="private", queue=False)
    reuse_seed.click(lambda last: -1 if last is None else last, last_seed, seed,
                     api_visibility="private", queue=False)

    inputs = [prompt, negative, width, height, prior_steps, decoder_steps, prior_guidance,
              decoder_guidance, num_images, seed]

    # The parameter names are the API's (DESIGN.md), so clients may pass them as keywords.
    def handler(prompt: Any, negative_prompt: Any, width: Any, height: Any, prior_steps: Any,
                decoder_steps: Any, prior_guidance: Any, decoder_guidance: Any, num_images: Any, seed: Any,
                show_previews: Any, request: gr.Request,
                progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, Any]]:
        values = [prompt, negative_prompt, width, height, prior_steps, decoder_steps, prior_guidance,
                  decoder_guidance, num_images, seed]
        yield from generate(studio, values, show_previews, request, progress)

    # preprocess=False: gr.Textbox would turn a list or a number sent for the prompt into its str();
    # our validation sees the value as sent and names the field instead.
    event = run.click(on_gpu(handler, gpu_seconds), [*inputs, previews], [gallery, info],
                      api_name="generate_image", preprocess=False, **GPU_QUEUE)
    event.then(lambda data: (data or {}).get("seed"), info, last_seed, api_visibility="private", queue=False)
    event.then(lambda: recent_images(studio), None, history, api_visibility="private", queue=False)
    event.then(lambda data: ((data or {}).get("files") or [None])[0], info, selected,
               api_visibility="private", queue=False)

    def on_select(data: dict | None, evt: gr.SelectData) -> str | None:
        files = (data or {}).get("files") or []
        return files[evt.index] if isinstance(evt.index, int) and evt.index < len(files) else None

    gallery.select(on_select, info, selected, api_visibility="private", queue=False)

    wire_result_restore(wire_stop(studio, stop, [event]), [event], gallery, info)
    return {"selected_image": selected, "send_row": send_row}


def demo(studio: Studio) -> gr.Blocks:
    """This tab alone, for a quick look: ``demo(studio).launch()``."""
    return standalone(build, studio, "Cascade Studio: Image")
