"""Image tab: text-to-image with Stable Cascade, or an SD model (``tabs.sd``) picked in its selector.

The ``/generate_image`` event takes exactly DESIGN.md's inputs, in order, with ``preprocess=False``.
Steps, guidance and the image count are sliders on screen, but Gradio never checks an API value
against their range: that check is a slider's ``preprocess``, skipped here, and it would refuse a
bad value with a message that names no field. ``TextToImageRequest`` checks every value instead,
naming the field. Width and height stay number fields, typed by hand or set by the aspect-ratio
choice; typing one selects the choice of that size, or none, so the choice never names a ratio
that is not used. The live previews switch reaches the handler as a ``gr.State``, which is not an
API input: API calls run without previews and get the final gallery and info only.

Generate and Stop sit right under the prompt, as in AUTOMATIC1111: on a phone the settings
below them would otherwise push them off the first screen.

**PNG Info** (another A1111 habit): a PNG dropped in the tab's "PNG Info" box puts its prompt,
negative prompt, size, steps, guidance and seed back into the fields, fitted to their ranges,
and a notice says what was restored. The same reader (``backends.runtime.png_info``) serves the
public ``/png_info`` endpoint, outside the GPU queue: reading a text chunk takes milliseconds and
must never wait behind a job.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
from gradio.data_classes import FileDataDict

from backends.cascade.requests import (
    MAX_DECODER_STEPS,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_PRIOR_STEPS,
    MAX_SIZE,
    MIN_SIZE,
    SIZE_MULTIPLE,
    TextToImageRequest,
)
from backends.runtime.errors import InputError
from backends.runtime.image_requests import SIZE_MULTIPLE as SD_SIZE_MULTIPLE
from backends.runtime.png_info import read_png_info
from backends.runtime.requests import MAX_SEED, shown
from backends.runtime.studio import Studio
from tabs import sd
from tabs.common import (
    GPU_QUEUE,
    api_file_input,
    on_gpu,
    on_page_load,
    standalone,
    uploaded_path,
    user_errors,
    wire_stop,
)
from tabs.streaming import image_job, wire_result_restore, wire_selection

logger = logging.getLogger(__name__)

ASPECTS = {"1:1": 1.0, "4:3": 4 / 3, "3:4": 3 / 4, "3:2": 3 / 2, "2:3": 2 / 3, "16:9": 16 / 9,
           "9:16": 9 / 16, "21:9": 21 / 9}
#: The guidance sliders' step; a restored value is rounded to it, since a range input snaps to it.
GUIDANCE_STEP = 0.1
#: What a PNG can restore, in the order the restore event's outputs list the widgets.
RESTORED = ("prompt", "negative_prompt", "width", "height", "prior_steps", "decoder_steps", "prior_guidance",
            "decoder_guidance", "seed")
#: Each restorable number's range on screen, and its label in the notice.
RANGES: dict[str, tuple[float, float]] = {"prior_steps": (1, MAX_PRIOR_STEPS), "decoder_steps": (1, MAX_DECODER_STEPS),
                                          "prior_guidance": (0, MAX_GUIDANCE), "decoder_guidance": (0, MAX_GUIDANCE),
                                          "seed": (-1, MAX_SEED)}
LABELS = {"prompt": "prompt", "negative_prompt": "negative prompt", "prior_steps": "Stage C steps",
          "decoder_steps": "Stage B steps", "prior_guidance": "Stage C guidance",
          "decoder_guidance": "Stage B guidance", "seed": "seed"}


def _on_grid(value: float) -> int:
    return int(min(max(value, MIN_SIZE), MAX_SIZE))


def _number(value: int | float) -> str:
    """A number for a notice: ints in full (a seed's 4294967295), floats short (7.5, 20)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def aspect_size(ratio: float, base: int) -> tuple[int, int]:
    """The size used for this aspect: near ``base``² pixels, each side a multiple of 128.

    Each side of the exact size is rounded down and up to the 128 grid (within 256–2048); of the
    four sizes, the one whose ratio is nearest ``ratio`` wins, the area nearest ``base``² breaking
    ties. Rounding each side to its nearest multiple instead made 4:3 at the tiny preset's 256²
    a square 256×256 and 16:9 at 768² a 2:1 1024×512.
    """

    def grid(value: float) -> set[int]:
        low = math.floor(value / SIZE_MULTIPLE) * SIZE_MULTIPLE
        return {_on_grid(low), _on_grid(low + SIZE_MULTIPLE)}

    sizes = [(w, h) for w in grid(base * math.sqrt(ratio)) for h in grid(base / math.sqrt(ratio))]
    return min(sizes, key=lambda s: (round(abs(math.log(s[0] / s[1] / ratio)), 9),
                                     abs(math.log(s[0] * s[1] / base**2)), s))


def aspect_choices(base: int) -> list[str]:
    """The aspect-ratio choices, each with the size it sets: "21:9 (512×256)"."""
    return [f"{name} ({w}×{h})" for name, ratio in ASPECTS.items() for w, h in [aspect_size(ratio, base)]]


def aspect_choice(width: Any, height: Any, base: int) -> str | None:
    """The choice that sets exactly ``width``×``height`` (of several, the ratio nearest it); else None."""
    try:
        size = (int(width), int(height))
    except (TypeError, ValueError, OverflowError):
        return None
    if size[0] != width or size[1] != height or min(size) <= 0:
        return None
    matching = [(abs(math.log(size[0] / size[1] / ratio)), choice)
                for choice, ratio in zip(aspect_choices(base), ASPECTS.values())
                if aspect_size(ratio, base) == size]
    return min(matching)[1] if matching else None


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


def fit_to_widgets(info: dict[str, Any], multiple: int = SIZE_MULTIPLE) -> tuple[dict[str, Any], list[str], list[str]]:
    """The Image tab's values from a PNG's parameters (``read_png_info``), fitted to the widgets.

    Args:
        multiple: the size grid of the model the restore chooses (Stable Cascade's 128, the SD
            models' 64).

    Returns:
        ``(values by field, what was restored, what had to be fitted or was left out)``, the
        last two as phrases for the notice. Sizes go to the nearest multiple of the grid within
        256–2048, numbers into their slider's range (guidance to its step); a seed outside
        -1…4294967295 is left out rather than changed, since another seed is another picture.
    """
    values: dict[str, Any] = {}
    said: list[str] = []
    notes: list[str] = []
    for field in ("prompt", "negative_prompt"):
        if isinstance(info.get(field), str):
            values[field] = info[field]
            said.append(LABELS[field] if info[field] else f"{LABELS[field]} (empty)")
    if isinstance(info.get("width"), int) and isinstance(info.get("height"), int):
        asked = (info["width"], info["height"])
        size = tuple(_on_grid(round(side / multiple) * multiple) for side in asked)
        values["width"], values["height"] = size
        said.append(f"size {size[0]}×{size[1]}")
        if size != asked:
            notes.append(f"the file's size {asked[0]}×{asked[1]} became {size[0]}×{size[1]} (sizes are multiples "
                         f"of {multiple} from {MIN_SIZE} to {MAX_SIZE})")
    for field in ("prior_steps", "decoder_steps", "prior_guidance", "decoder_guidance", "seed"):
        value = info.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high = RANGES[field]
        if field == "seed" and not low <= value <= high:
            notes.append(f"seed {shown(value)} is outside -1…{MAX_SEED}, so it was not restored")
            continue
        inside: int | float = min(max(value, low), high)
        fitted = round(round(inside / GUIDANCE_STEP) * GUIDANCE_STEP, 1) if "guidance" in field else int(inside)
        values[field] = fitted
        said.append(f"{LABELS[field]} {_number(fitted)}")
        if fitted != value:
            why = (f"the field takes {_number(low)}–{_number(high)}" if inside != value
                   else f"the slider's step is {GUIDANCE_STEP:g}")
            notes.append(f"{LABELS[field]} {shown(value)} became {_number(fitted)} ({why})")
    return values, said, notes


def restore_notice(name: str, info: dict[str, Any], said: list[str], notes: list[str]) -> str:
    """What a restore tells the user: the file, whose layout it was, what was restored and fitted."""
    source = "Cascade Studio" if info.get("source") == "cascade-studio" else "AUTOMATIC1111 layout"
    text = f"Restored from {name} ({source}): {', '.join(said)}."
    if notes:
        text += " Note: " + "; ".join(notes) + "."
    return text


def png_info_api(image: FileDataDict | None) -> dict[str, Any]:
    """Read the generation parameters stored in a PNG: this app's own, or AUTOMATIC1111's "parameters" text.

    Reads text chunks only, in milliseconds, outside the GPU queue; the picture itself is not looked at.

    Args:
        image: the PNG: an http(s) URL or a data:image/png;base64,... string (gradio_client: handle_file("a.png")).

    Returns:
        JSON: "source" (cascade-studio or a1111) and the /generate_image fields the file has
        "other" (every other parameter, by the file's own name) and "raw" (the text as stored).
    """

    def read() -> dict[str, Any]:
        path = uploaded_path("image", image)
        if path is None:
            raise InputError("image", "no image given; upload a PNG (with gradio_client: handle_file('photo.png'))")
        return read_png_info(path)

    return user_errors("PNG Info", read)


def build(studio: Studio) -> dict[str, Any]:
    """Build the tab's components and wire its events (call inside a ``gr.Blocks``).

    Returns the handles other tabs are wired to by ``app.py``: ``selected_image`` (a State with
    the picked result's path), ``send_row`` (where "Send to …" buttons go) and ``prompt`` (which
    travels with a picture sent to a tab that has one).
    """
    defaults = studio.preset.settings.cascade.defaults
    base = math.isqrt(defaults.width * defaults.height)
    choices = aspect_choices(base)
    sizes = f"{MIN_SIZE}–{MAX_SIZE}, multiple of {SIZE_MULTIPLE}"
    models = sd.choices(studio)
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(models, value=sd.CASCADE, label="Model", visible=len(models) > 1,
                                elem_id="image-model", info="Stable Cascade, or an SD model this preset offers")
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="A lighthouse on a cliff at dawn, oil painting")
            negative = gr.Textbox(label="Negative prompt", value=defaults.negative_prompt, lines=1)
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="image-generate")
                run_sd = gr.Button("Generate", variant="primary", elem_id="image-sd-generate", visible=False)
                stop = gr.Button("Stop", variant="stop", elem_id="image-stop")
            with gr.Accordion("PNG Info", open=False, elem_id="image-png-info"):
                png_file = gr.File(label="Drop a PNG to restore its settings", file_types=["image"],
                                   type="filepath", height=120, elem_id="image-png-file")
                png_params = gr.JSON(label="Parameters in the file", elem_id="image-png-params")
            aspect = gr.Radio(choices, value=aspect_choice(defaults.width, defaults.height, base),
                              label="Aspect ratio", elem_id="image-aspect")
            with gr.Accordion("Advanced", open=False):
                with gr.Row():
                    width = gr.Number(value=defaults.width, label="Width", info=sizes)
                    height = gr.Number(value=defaults.height, label="Height", info=sizes)
                num_images = gr.Slider(1, MAX_IMAGES, value=defaults.num_images, step=1, label="Images")
                sd_controls = sd.build_controls("image")
                cascade_group = gr.Group(elem_id="image-cascade-controls")
                with cascade_group, gr.Row():
                    prior_steps = gr.Slider(1, MAX_PRIOR_STEPS, value=defaults.prior_steps, step=1,
                                            label="Stage C steps")
                    decoder_steps = gr.Slider(1, MAX_DECODER_STEPS, value=defaults.decoder_steps, step=1,
                                              label="Stage B steps")
                with cascade_group, gr.Row():
                    prior_guidance = gr.Slider(0, MAX_GUIDANCE, value=defaults.prior_guidance, step=GUIDANCE_STEP,
                                               label="Stage C guidance")
                    decoder_guidance = gr.Slider(0, MAX_GUIDANCE, value=defaults.decoder_guidance,
                                                 step=GUIDANCE_STEP, label="Stage B guidance", info="0 is fastest")
            with gr.Row():
                seed = gr.Number(value=-1, label="Seed", info="-1 picks a random seed", scale=3)
                random_seed = gr.Button("Random", scale=1, size="sm")
                reuse_seed = gr.Button("Reuse last", scale=1, size="sm")
            previews_box = gr.Checkbox(value=False, label="Live previews",
                                       info="Show stage C's progress as small previews (slightly slower)")
        with gr.Column(scale=3):
            # Results only: not interactive, so it offers no upload; shown whole, never cropped.
            gallery = gr.Gallery(label="Result", columns=2, height=512, elem_id="image-gallery",
                                 format="png", object_fit="contain", interactive=False)
            # app.py adds one "Send to …" button here for each tab that takes an image.
            send_row = gr.Row(elem_id="image-send")
            info = gr.JSON(label="Info (seed used, timings, preset, model)")
    with gr.Accordion("Recent outputs", open=False):
        history = gr.Gallery(label="Recent", columns=6, height=240, show_label=False, elem_id="image-history",
                             object_fit="contain", interactive=False)
    # Filled at every page load, so the history is fresh after a restart.
    on_page_load(lambda: recent_images(studio), history)
    last_seed = gr.State(value=None)
    previews = gr.State(value=False)  # the switch, as an input that API calls do not see
    previews_box.change(lambda on: on, previews_box, previews, api_visibility="private", queue=False)

    def on_aspect(choice: str | None) -> tuple[Any, Any]:
        ratio = ASPECTS.get(str(choice or "").split(" ")[0])
        return (gr.skip(), gr.skip()) if ratio is None else aspect_size(ratio, base)

    # ``input``, not ``change``: only the user's own pick sets the size, never a restore or a typed size.
    aspect.input(on_aspect, aspect, [width, height], api_visibility="private", queue=False)
    for side in (width, height):
        side.input(lambda w, h: aspect_choice(w, h, base), [width, height], aspect,
                   api_visibility="private", queue=False)
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
        """Text to image with Stable Cascade: stage C drafts a small latent from the prompt, stage B enlarges it.

        Runs on this machine's GPU, one job at a time behind any other; left-out arguments take this server's
        preset defaults (each argument's schema default). A bad value is refused, naming the field and its range.

        Args:
            prompt: what the image shows, in English (must not be empty; text past 4000 characters is cut).
            negative_prompt: what to steer away from, e.g. "blurry, text"; empty for nothing.
            width: image width in pixels, a multiple of 128 from 256 to 2048 (1024 is the model's native size).
            height: image height in pixels, a multiple of 128 from 256 to 2048.
            prior_steps: stage C denoising steps, 1 to 100 (20 is the official default; more is slower).
            decoder_steps: stage B denoising steps, 1 to 50 (10 is the official default).
            prior_guidance: stage C prompt guidance, 0 to 20 (4 is the official default; more follows the prompt).
            decoder_guidance: stage B guidance, 0 to 20 (0, the default, is fastest).
            num_images: how many images, 1 to 4; image i is made with seed + i.
            seed: 0 to 4294967295 for a repeatable result, or -1 for a random seed (the info gives the one used).

        Returns:
            The images (PNG files, each with its URL) and an info JSON: seed used, timings, model, preset, saved files.
        """
        values = [prompt, negative_prompt, width, height, prior_steps, decoder_steps, prior_guidance,
                  decoder_guidance, num_images, seed]
        yield from generate(studio, values, show_previews, request, progress)

    # preprocess=False: gr.Textbox would turn a list or a number sent for the prompt into its str(),
    # and gr.Slider would refuse an out-of-range number without naming the field; our validation
    # sees the value as sent and names the field instead.
    event = run.click(on_gpu(handler, gpu_seconds), [*inputs, previews], [gallery, info],
                      api_name="generate_image", preprocess=False, **GPU_QUEUE)
    selector = sd.Selector(model, run, run_sd, cascade_group, sd_controls, width, height)
    sd_ui, sd_public = sd.wire_text_to_image(studio, selector, [prompt, negative, width, height, num_images, seed],
                                             [gallery, info])
    for job in (event, sd_ui, sd_public):
        job.then(lambda data: (data or {}).get("seed"), info, last_seed, api_visibility="private", queue=False)
        job.then(lambda: recent_images(studio), None, history, api_visibility="private", queue=False)
    selected = wire_selection([event, sd_ui], gallery, info)

    wire_stop(studio, stop, [event, sd_ui, sd_public], keep_finished=True)
    wire_result_restore([event, sd_ui], gallery, info)
    wire_png_info(studio, png_file, [prompt, negative, width, height, prior_steps, decoder_steps, prior_guidance,
                                     decoder_guidance, seed], aspect, png_params, base, selector)
    return {"selected_image": selected, "send_row": send_row, "prompt": prompt}


def wire_png_info(studio: Studio, png_file: gr.File, widgets: list[Any], aspect: gr.Radio, shown: gr.JSON,
                  base: int, selector: sd.Selector) -> None:
    """A dropped PNG restores the fields (``RESTORED``, in ``widgets``' order) and the model
    (``sd.restore``); ``/png_info`` reads one.

    Both run queued (gradio drops ``gr.Info`` outside the queue) in their own unlimited groups,
    not the GPU's: a restore or an API read never waits behind a job.
    """

    def restore(path: str | None) -> dict[Any, Any]:
        if not path:
            return {}
        info = user_errors("PNG Info", lambda: read_png_info(path))
        model_updates, model_said, model_notes = sd.restore(studio, selector, info)
        grid = SD_SIZE_MULTIPLE if model_updates[selector.model] != sd.CASCADE else SIZE_MULTIPLE
        values, said, notes = fit_to_widgets(info, grid)
        said, notes = model_said + said, model_notes + notes
        if said:
            gr.Info(restore_notice(Path(path).name, info, said, notes), title="PNG Info")
        else:
            gr.Warning(f"{Path(path).name} carries parameters, but none the Image tab takes; they are shown "
                       "under PNG Info.", title="PNG Info")
        updates = {widget: values[field] for widget, field in zip(widgets, RESTORED) if field in values}
        if "width" in values:
            updates[aspect] = aspect_choice(values["width"], values["height"], base)
        # The drop zone is emptied, ready for the next PNG; the JSON says which file it shows.
        return {**model_updates, **updates, shown: gr.JSON(value=info, label=f"Parameters in {Path(path).name}"),
                png_file: None}

    outputs = [*widgets, aspect, shown, png_file, selector.model, *selector.outputs(sizes=False)]
    png_file.upload(restore, png_file, outputs, api_visibility="private",
                    concurrency_limit=None)
    # The public endpoint reads the picture from a hidden JSON input, as the tabs' other picture
    # endpoints do (tabs.common explains why), on a hidden button.
    trigger = gr.Button("png_info", visible=False)
    trigger.click(png_info_api, api_file_input("image"), shown, api_name="png_info", preprocess=False,
                  concurrency_limit=None)


def demo(studio: Studio) -> gr.Blocks:
    """This tab alone, for a quick look: ``demo(studio).launch()``."""
    return standalone(build, studio, "Cascade Studio: Image")
