"""The SD models (SD3.5, SDXL) inside the Image and Variation / img2img tabs.

Not a tab of its own: the Image tab and the Variation / img2img tab each put a model selector
over their Stable Cascade controls, and this module holds what the SD side of both needs: the
offered models and their defaults, the controls only SD models have, the handlers and the public
endpoints ``/generate_image_sd``, ``/img2img_sd`` and ``/inpaint`` (DESIGN.md: ``model`` is their
last input; empty means the preset's default).

Only the chosen model's controls show, as in Forge's UI switch: SD3.5 adds the T5 sequence
length, SDXL the refiner and its switch point. Each model starts from its own official steps and
guidance (the preset's ``defaults``), set when it is picked. The UI's buttons run private events
with those extra controls; the public endpoints take exactly the contract's inputs and leave the
extras to the preset. As elsewhere, public endpoints read numbers and pictures raw
(``preprocess=False``, hidden JSON file inputs) so our validation names the field.

The inpaint mask is drawn on the picture (``gr.ImageEditor``, white brush) or uploaded; the
picture itself is the tab's input file, so the editor is only a drawing surface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import gradio as gr
from PIL import Image, ImageChops

from backends.runtime.image_requests import (
    MAX_GUIDANCE,
    MAX_STEPS,
    SdImageRequest,
    SdTextToImageRequest,
)
from backends.runtime.studio import Studio
from tabs.common import GPU_QUEUE, api_endpoint, on_gpu, user_errors
from tabs.streaming import image_job

#: The value of the selectors' Stable Cascade entry (never an SD endpoint's ``model``).
CASCADE = "cascade"
#: What the selectors show for each ``model`` value.
LABELS = {"sd3.5-large": "SD3.5 Large", "sd3.5-large-turbo": "SD3.5 Large Turbo",
          "sd3.5-medium": "SD3.5 Medium", "sdxl": "SDXL 1.0"}
#: The guidance slider's step.
GUIDANCE_STEP = 0.1


@dataclass(frozen=True)
class ModelDefaults:
    """What a model's controls start from: the preset's defaults of that model."""

    family: str
    steps: int
    guidance: float
    width: int
    height: int
    strength: float
    #: The family's own controls and their starting values (``max_sequence_length``, ``refiner``...).
    options: dict[str, Any] = field(default_factory=dict)
    license: str = ""


def offered(studio: Studio) -> dict[str, str]:
    """The SD models this preset offers, each with its family."""
    return studio.registry.models()


def choices(studio: Studio, with_cascade: bool = True) -> list[tuple[str, str]]:
    """The selector's (label, value) pairs: Stable Cascade first, then the offered SD models."""
    models = [(LABELS.get(model, model), model) for model in offered(studio)]
    return ([("Stable Cascade", CASCADE)] if with_cascade else []) + models


def model_defaults(studio: Studio, model: str) -> ModelDefaults:
    """The preset's defaults of an offered SD model (the official ones, NOTES.md and the model cards)."""
    family = offered(studio)[model]
    settings = studio.registry.settings(family)
    spec = studio.registry.spec(family)
    license_line = f"{spec.family}: [{spec.license}]({spec.license_url})"
    if family == "sd3":
        from backends.sd3.requests import model_defaults as sd3_defaults

        d = sd3_defaults(settings, model)
        options: dict[str, Any] = {"max_sequence_length": d.max_sequence_length}
    else:
        d = settings.defaults
        options = {"refiner": d.refiner, "high_noise_frac": d.high_noise_frac}
    return ModelDefaults(family, d.steps, d.guidance, d.width, d.height, d.strength, options, license_line)


def seconds(width: Any, height: Any, steps: Any, images: Any = 1) -> int:
    """ZeroGPU duration: a cold load plus 0.5 s a step per megapixel and image (SD3.5 Large's
    8B transformer is the slowest per step; a 1024² step with guidance takes about that)."""
    try:
        megapixels = (float(width) or 1024.0) * (float(height) or 1024.0) / 2**20
        work = float(steps) * megapixels * max(1.0, float(images))
    except (TypeError, ValueError):
        return 60  # invalid input fails fast in the handler; any duration will do
    return int(min(300, max(30, 30 + 0.5 * work)))


@dataclass
class SdControls:
    """The controls only SD models have, in a group shown while one is chosen."""

    group: Any
    steps: gr.Slider
    guidance: gr.Slider
    max_sequence_length: gr.Slider
    refiner: gr.Checkbox
    high_noise_frac: gr.Slider
    license: gr.Markdown

    @property
    def extras(self) -> list[Any]:
        """The family options' widgets, in the order ``options_from`` reads them."""
        return [self.max_sequence_length, self.refiner, self.high_noise_frac]


def build_controls(prefix: str) -> SdControls:
    """The SD controls, hidden until an SD model is chosen (call inside the tab's layout)."""
    with gr.Group(visible=False, elem_id=f"{prefix}-sd-controls") as group:
        with gr.Row():
            steps = gr.Slider(1, MAX_STEPS, value=30, step=1, label="Steps", elem_id=f"{prefix}-sd-steps")
            guidance = gr.Slider(0, MAX_GUIDANCE, value=5.0, step=GUIDANCE_STEP, label="Guidance",
                                 info="0 turns guidance off (Large Turbo's default)", elem_id=f"{prefix}-sd-guidance")
        max_sequence_length = gr.Slider(77, 512, value=256, step=1, label="T5 sequence length", visible=False,
                                        info="Prompt tokens T5 reads; longer follows long prompts, costs memory")
        with gr.Row():
            refiner = gr.Checkbox(value=False, label="Refiner", visible=False,
                                  info="SDXL's refiner takes over the last steps (more detail, more memory)")
            high_noise_frac = gr.Slider(0.05, 0.95, value=0.8, step=0.05, label="Refiner switch point",
                                        visible=False, info="Share of the steps the base model runs")
        license_text = gr.Markdown("", elem_id=f"{prefix}-sd-license")
    return SdControls(group, steps, guidance, max_sequence_length, refiner, high_noise_frac, license_text)


def on_model(studio: Studio, model: str, controls: SdControls) -> dict[Any, Any]:
    """Updates for the SD controls when ``model`` is chosen (``CASCADE`` hides them)."""
    if model not in offered(studio):
        return {controls.group: gr.update(visible=False)}
    d = model_defaults(studio, model)
    sd3, sdxl = d.family == "sd3", d.family == "sdxl"
    return {
        controls.group: gr.update(visible=True),
        controls.steps: gr.update(value=d.steps),
        controls.guidance: gr.update(value=d.guidance),
        controls.max_sequence_length: gr.update(visible=sd3, value=d.options.get("max_sequence_length", 256)),
        controls.refiner: gr.update(visible=sdxl, value=bool(d.options.get("refiner", False))),
        controls.high_noise_frac: gr.update(visible=sdxl, value=d.options.get("high_noise_frac", 0.8)),
        controls.license: gr.update(value=f"License of this model: {d.license}"),
    }


def options_from(studio: Studio, model: Any, max_sequence_length: Any, refiner: Any,
                 high_noise_frac: Any) -> dict[str, Any]:
    """The family options the tab's extra controls set for ``model`` (none for an unknown model)."""
    family = offered(studio).get(model) if isinstance(model, str) else None
    if family == "sd3":
        return {"max_sequence_length": max_sequence_length}
    if family == "sdxl":
        return {"refiner": refiner, "high_noise_frac": high_noise_frac}
    return {}


def generate(studio: Studio, values: list[Any], options: dict[str, Any], request: gr.Request | None,
             progress: gr.Progress) -> Iterator[tuple[Any, Any]]:
    """Text-to-image with an SD model: ``values`` in the ``/generate_image_sd`` order."""
    models = offered(studio)
    job = user_errors("Image generation", lambda: SdTextToImageRequest.build(
        *values, offered=list(models), default_model=studio.registry.default_model(), options=options))
    yield from image_job(studio, studio.registry.model_task(job.model, "text_to_image"), lambda: job, False, request,
                         progress, what="Image generation")


def _chosen(studio: Studio, model: Any) -> ModelDefaults | None:
    """The defaults of the model a request names, or of the preset's default for an empty one."""
    name = model.strip() if isinstance(model, str) and model.strip() else studio.registry.default_model()
    return model_defaults(studio, name) if name in offered(studio) else None


def _sampling(studio: Studio, model: Any) -> dict[str, Any]:
    """Steps and guidance of the model a request names (the contract leaves them to the preset)."""
    d = _chosen(studio, model)
    return {} if d is None else {"steps": d.steps, "guidance": d.guidance}  # a bad model is refused later


def _area(studio: Studio, model: Any) -> int:
    """The output area a size taken from the picture aims at: the model's default size."""
    d = _chosen(studio, model)
    return 1024 * 1024 if d is None else d.width * d.height


def img2img(studio: Studio, values: list[Any], options: dict[str, Any], request: gr.Request | None,
            progress: gr.Progress, sampling: dict[str, Any] | None = None) -> Iterator[tuple[Any, Any]]:
    """img2img with an SD model: ``values`` in the ``/img2img_sd`` order."""
    models = offered(studio)
    job = user_errors("img2img", lambda: SdImageRequest.img2img(
        *values, offered=list(models), default_model=studio.registry.default_model(),
        sampling=sampling or _sampling(studio, values[-1]), options=options, area=_area(studio, values[-1])))
    yield from image_job(studio, studio.registry.model_task(job.model, "img2img"), lambda: job, False, request,
                         progress, what="img2img")


def inpaint(studio: Studio, values: list[Any], options: dict[str, Any], request: gr.Request | None,
            progress: gr.Progress, sampling: dict[str, Any] | None = None) -> Iterator[tuple[Any, Any]]:
    """Inpainting with an SD model: ``values`` in the ``/inpaint`` order."""
    models = offered(studio)
    job = user_errors("Inpaint", lambda: SdImageRequest.inpaint(
        *values, offered=list(models), default_model=studio.registry.default_model(),
        sampling=sampling or _sampling(studio, values[-1]), options=options, area=_area(studio, values[-1])))
    yield from image_job(studio, studio.registry.model_task(job.model, "inpaint"), lambda: job, False, request,
                         progress, what="Inpaint")


def drawn_mask(editor: Any) -> Image.Image | None:
    """The mask painted in the ``gr.ImageEditor``: every layer's painted (opaque) pixels, white.

    Returns None when nothing is painted (the request then says the mask is empty) or the
    editor holds no picture.
    """
    if not isinstance(editor, dict):
        return None
    layers = [layer for layer in editor.get("layers") or [] if isinstance(layer, Image.Image)]
    background = editor.get("background")
    size = background.size if isinstance(background, Image.Image) else (layers[0].size if layers else None)
    if size is None:
        return None
    marks = Image.new("L", size, 0)
    for layer in layers:
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != size:
            alpha = alpha.resize(size, Image.Resampling.NEAREST)
        marks = ImageChops.lighter(marks, alpha)
    return marks


@dataclass
class Selector:
    """The Image tab's model selector and the widgets a choice switches."""

    model: gr.Dropdown
    #: Stable Cascade's and the SD models' Generate buttons; one shows at a time.
    run: gr.Button
    run_sd: gr.Button
    #: The group of Stable Cascade's own controls.
    cascade: Any
    controls: SdControls
    width: Any
    height: Any

    def outputs(self, sizes: bool = True) -> list[Any]:
        """What ``switch`` updates (the size fields only with ``sizes``)."""
        c = self.controls
        shown = [self.run, self.run_sd, self.cascade, c.group, c.steps, c.guidance, *c.extras, c.license]
        return shown + ([self.width, self.height] if sizes else [])

    def switch(self, studio: Studio, chosen: str, sizes: bool = True) -> dict[Any, Any]:
        """Updates that show ``chosen``'s controls and button; with ``sizes``, its default size too."""
        sd = chosen in offered(studio)
        updates = {self.run: gr.update(visible=not sd), self.run_sd: gr.update(visible=sd),
                   self.cascade: gr.update(visible=not sd)}
        updates.update(on_model(studio, chosen, self.controls))
        if sd and sizes:
            d = model_defaults(studio, chosen)
            updates.update({self.width: gr.update(value=d.width), self.height: gr.update(value=d.height)})
        return updates


def _fitted(value: Any, low: float, high: float, step: float) -> int | float | None:
    """A number from a file put on a slider (within its range, on its step); None if not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    inside = min(max(value, low), high)
    return int(round(inside)) if step == 1 else round(round(inside / step) * step, 2)


def restore(studio: Studio, selector: Selector, info: dict[str, Any]) -> tuple[dict[Any, Any], list[str], list[str]]:
    """What a PNG restores of the model side: the selector, and an SD model's steps, guidance, options.

    Our own SD files name their ``model`` (under ``other``: it is no Cascade field). An offered
    model is chosen and its controls get the file's values, fitted to the sliders; any other file
    (ours from Cascade, A1111's, whose Steps and CFG map to stage C) chooses Stable Cascade. A
    model this preset does not offer is said in the notes, and Stable Cascade takes the rest.

    Returns:
        ``(updates, what was restored, notes)``, the last two as phrases for the notice.
    """
    other = info.get("other") if isinstance(info.get("other"), dict) else {}
    model = other.get("model")
    said: list[str] = []
    notes: list[str] = []
    if not isinstance(model, str) or model not in offered(studio):
        if isinstance(model, str) and model in LABELS:
            notes.append(f"the file was made with {LABELS[model]}, which this preset does not offer, so its "
                         "settings went to Stable Cascade")
        return {selector.model: CASCADE, **selector.switch(studio, CASCADE, sizes=False)}, said, notes
    c = selector.controls
    updates = {selector.model: model, **selector.switch(studio, model, sizes=False)}
    said.append(f"model {LABELS.get(model, model)}")
    options = other.get("options") if isinstance(other.get("options"), dict) else {}
    family = offered(studio)[model]
    wanted = [(c.steps, "steps", other.get("steps"), (1, MAX_STEPS, 1)),
              (c.guidance, "guidance", other.get("guidance"), (0, MAX_GUIDANCE, GUIDANCE_STEP))]
    if family == "sd3":
        wanted.append((c.max_sequence_length, "T5 sequence length", options.get("max_sequence_length"), (77, 512, 1)))
    if family == "sdxl":
        wanted.append((c.high_noise_frac, "refiner switch point", options.get("high_noise_frac"), (0.05, 0.95, 0.05)))
    for widget, label, value, (low, high, step) in wanted:
        fitted = _fitted(value, low, high, step)
        if fitted is None:
            continue
        updates[widget] = gr.update(value=fitted)
        said.append(f"{label} {fitted:g}")
        if fitted != value:
            notes.append(f"{label} {value:g} became {fitted:g} (the slider takes {low:g}–{high:g}, "
                         f"in steps of {step:g})")
    if family == "sdxl" and isinstance(options.get("refiner"), bool):
        updates[c.refiner] = gr.update(value=options["refiner"])
        said.append(f"refiner {'on' if options['refiner'] else 'off'}")
    return updates, said, notes


def wire_text_to_image(studio: Studio, selector: Selector, fields: list[Any], outputs: list[Any]) -> list[Any]:
    """The Image tab's SD side: the selector's switch, the SD button and ``/generate_image_sd``.

    Args:
        selector: the model selector (``CASCADE`` or an offered SD model) and what it switches.
        fields: prompt, negative prompt, width, height, images and seed, the widgets both share.
        outputs: the gallery and the info.

    Returns:
        The SD events (the UI's and the public one), for Stop, the history and the selection.
    """
    prompt, negative, width, height, num_images, seed = fields
    model, run_sd, controls = selector.model, selector.run_sd, selector.controls
    model.input(lambda chosen: selector.switch(studio, chosen), model, selector.outputs(),
                api_visibility="private", queue=False)

    def ui_handler(prompt: Any, negative_prompt: Any, width: Any, height: Any, steps: Any, guidance: Any,
                   num_images: Any, seed: Any, model: Any, max_sequence_length: Any, refiner: Any,
                   high_noise_frac: Any, request: gr.Request,
                   progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, Any]]:
        values = [prompt, negative_prompt, width, height, steps, guidance, num_images, seed, model]
        options = options_from(studio, model, max_sequence_length, refiner, high_noise_frac)
        yield from generate(studio, values, options, request, progress)

    def generate_image_sd(prompt: Any, negative_prompt: Any, width: Any, height: Any, steps: Any, guidance: Any,
                          num_images: Any, seed: Any, model: Any, request: gr.Request,
                          progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, Any]]:
        """Text to image with Stable Diffusion 3.5 (Large, Large Turbo, Medium) or SDXL, Stability AI's SD models.

        Runs on this machine's GPU, one job at a time behind any other; left-out arguments take this server's
        preset defaults. Typical steps and guidance: sd3.5-large 28 and 3.5, sd3.5-large-turbo 4 and 0,
        sd3.5-medium 40 and 4.5, sdxl 30 and 5. A bad value is refused, naming the field and its range.

        Args:
            prompt: what the image shows, in English (must not be empty; text past 4000 characters is cut).
            negative_prompt: what to steer away from, e.g. "blurry, text"; empty for nothing.
            width: image width in pixels, a multiple of 64 from 256 to 2048 (1024 is the models' native size).
            height: image height in pixels, a multiple of 64 from 256 to 2048.
            steps: denoising steps, 1 to 150 (see the typical values above).
            guidance: prompt guidance, 0 to 30; 1 or less runs one pass a step (turbo models want 0).
            num_images: how many images, 1 to 4; image i is made with seed + i.
            seed: 0 to 4294967295 for a repeatable result, or -1 for a random seed (the info gives the one used).
            model: sd3.5-large, sd3.5-large-turbo, sd3.5-medium or sdxl, if this server offers it; "" for its default.

        Returns:
            The images (PNG files, each with its URL) and an info JSON: seed used, model, timings, saved files.
        """
        values = [prompt, negative_prompt, width, height, steps, guidance, num_images, seed, model]
        yield from generate(studio, values, {}, request, progress)

    def duration(prompt: Any, negative: Any, width: Any, height: Any, steps: Any, guidance: Any, images: Any,
                 *_: Any, **__: Any) -> int:
        return seconds(width, height, steps, images)

    shared = [prompt, negative, width, height, controls.steps, controls.guidance, num_images, seed]
    ui = run_sd.click(on_gpu(ui_handler, duration), [*shared, model, *controls.extras], outputs,
                      api_visibility="private", preprocess=False, **GPU_QUEUE)
    api_model = gr.Textbox(value="", label="model", visible=False)
    public = api_endpoint(generate_image_sd, duration, [*shared, api_model], outputs, "generate_image_sd")
    return [ui, public]
