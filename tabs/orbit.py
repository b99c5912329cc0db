"""3D orbit tab: SV3D_u / SV3D_p, a 21-view turntable of an object from one picture.

``/orbit`` takes DESIGN.md's inputs in order: image, variant (``u`` or ``p``), elevation_deg,
steps, seed, and then the camera path for p: ``path`` (``constant`` or ``sine``) and
``elevation_end_deg`` (the sine path's elevation opposite the input view). SV3D_u has no camera
input; for it the last two are ignored and the info says so. Outputs: the orbit MP4, a contact
sheet of the views, and the info JSON (seed, camera, guidance per frame, timings, files).

As in the Video tab, the picture comes in through ``gr.File`` (``gr.Image`` opens uploads before
our validation could name the problem), with a preview of what the model will see, and the public
``/orbit`` reads it from a hidden JSON input (``tabs.common`` explains why).
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
from gradio.data_classes import FileDataDict

from backends.runtime.studio import Studio
from backends.sv3d.requests import MAX_STEPS, PATHS, VARIANTS, OrbitRequest, prepare_object
from tabs.common import (
    GPU_QUEUE,
    Stopped,
    api_endpoint,
    api_file_input,
    gradio_progress,
    on_gpu,
    on_page_load,
    picture_file,
    session_of,
    standalone,
    uploaded_path,
    user_errors,
    wire_stop,
)

logger = logging.getLogger(__name__)

RECENT = 12
HELP = ("SV3D turns one picture of an object into 21 views around it. A cut-out PNG (transparent "
        "background) works best; other pictures are placed whole on white at 85 % of the frame. "
        "SV3D_p follows the camera path below; SV3D_u picks its own orbit and ignores it.")


def generate(studio: Studio, inputs: list[Any], request: gr.Request | None,
             progress: gr.Progress) -> tuple[str, str, dict[str, Any]]:
    """Validate, run the orbit through the registry, save atomically; return mp4, sheet, info."""
    from backends.sv3d.outputs import save_orbit

    session = session_of(request)
    defaults = studio.preset.settings.sv3d.defaults

    def work() -> tuple[str, str, dict[str, Any]]:
        req = OrbitRequest.build(*inputs, size=defaults.size, num_frames=defaults.num_frames)
        control = studio.start_job(session)
        try:
            # Denoising, then decoding frame by frame: one bar over both.
            report = gradio_progress(progress, (req.steps, req.num_frames), on_fraction=control.progressed)
            result = studio.registry.run("orbit", req, control.wrap(report))
        finally:
            studio.finish_job(session, control)
        info = {**result.info, "seed": req.seed, "preset": studio.preset.name}
        paths = save_orbit(studio.outputs, result.frames, result.fps, info)
        info["files"] = {kind: str(path) for kind, path in paths.items()}
        return str(paths["video"]), str(paths["sheet"]), info

    try:
        return user_errors("Orbit generation", work)
    except Stopped:
        return gr.skip(), gr.skip(), gr.skip()  # the previous orbit stays; nothing was saved


def preview(studio: Studio, image: Any) -> str | None:
    """The picture as the model will see it (its file: ``common.picture_file``); None when no
    file is chosen."""
    if image is None:
        return None
    size = studio.preset.settings.sv3d.defaults.size
    fitted, _, _ = user_errors("Orbit input", lambda: prepare_object(image, size))
    return picture_file(fitted)


def recent_orbits(studio: Studio) -> list[str]:
    return [str(p) for p in studio.outputs.recent(limit=RECENT, suffixes=(".mp4",))
            if p.with_name(p.stem + "-sheet.png").is_file()]


def gpu_seconds(image: Any, variant: Any, elevation_deg: Any, steps: Any, *_: Any, **__: Any) -> int:
    """ZeroGPU duration: a cold load and conversion (~90 s) plus about 1.5 s a step (42 frames of 576²)."""
    try:
        work = float(steps)
    except (TypeError, ValueError):
        return 60
    return int(min(300, max(60, 90 + 1.5 * work)))


def build(studio: Studio) -> dict[str, gr.Component]:
    """Build the tab's components and wire ``/orbit`` (call inside a ``gr.Blocks``).

    Returns:
        ``image`` (the picture input, which "Send to 3D orbit" fills) and ``preview``.
    """
    defaults = studio.preset.settings.sv3d.defaults
    gr.Markdown(HELP)
    with gr.Row():
        with gr.Column(scale=2):
            image = gr.File(label="Object picture (a cut-out PNG works best)", file_types=["image"],
                            type="filepath", elem_id="orbit-image")
            shown = gr.Image(label=f"What the model sees ({defaults.size}×{defaults.size})", type="pil",
                             interactive=False, height=240, elem_id="orbit-preview")
            # Dropdowns that accept any value: gradio's own choice check would answer API clients
            # before our validation could name the field (gradio 6.31).
            variant = gr.Dropdown(list(VARIANTS), value=defaults.variant, label="Variant", allow_custom_value=True,
                                  info="u: no camera input; p: follows the camera path")
            with gr.Row():
                elevation = gr.Number(value=defaults.elevation_deg, label="Elevation (degrees)",
                                      info="-90–90; the input view's camera height")
                steps = gr.Number(value=defaults.steps, label="Steps", info=f"1–{MAX_STEPS}")
            with gr.Accordion("Camera path (SV3D_p)", open=False):
                path = gr.Dropdown(list(PATHS), value=defaults.path, label="Path", allow_custom_value=True,
                                   info="constant elevation, or a sine wave to a second elevation half-way round")
                elevation_end = gr.Number(value=defaults.elevation_end_deg, label="Elevation opposite the input view",
                                          info="-90–90; sine path only")
            # The same seed row as the Image, Variation and Video tabs (a few copied lines).
            with gr.Row():
                seed = gr.Number(value=-1, label="Seed", info="-1 picks a random seed", scale=3)
                random_seed = gr.Button("Random", scale=1, size="sm")
                reuse_seed = gr.Button("Reuse last", scale=1, size="sm")
            with gr.Row():
                run = gr.Button("Generate orbit", variant="primary", elem_id="orbit-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="orbit-stop")
        with gr.Column(scale=3):
            video = gr.Video(label="Orbit", format="mp4", autoplay=True, loop=True, elem_id="orbit-result")
            sheet = gr.Image(label="All views", type="filepath", interactive=False, elem_id="orbit-sheet")
            files = gr.File(label="Download (MP4, sheet, parameters)", file_count="multiple", interactive=False)
            info = gr.JSON(label="Info (seed used, camera, guidance, timings)")
    with gr.Accordion("Recent orbits", open=False):
        history = gr.Gallery(label="Recent", columns=4, height=240, show_label=False)
    on_page_load(lambda: recent_orbits(studio), history)
    last_seed = gr.State(value=None)  # the seed the last orbit of this session used

    image.change(lambda value: preview(studio, value), image, shown, api_visibility="private")
    random_seed.click(lambda: -1, None, seed, api_visibility="private", queue=False)
    reuse_seed.click(lambda last: -1 if last is None else last, last_seed, seed, api_visibility="private",
                     queue=False)

    def orbit(image: Any, variant: Any, elevation_deg: Any, steps: Any, seed: Any, path: Any,
              elevation_end_deg: Any, request: gr.Request,
              progress: gr.Progress = gr.Progress()) -> tuple[str, str, dict[str, Any]]:
        """Picture to orbit: image, variant, elevation_deg, steps, seed, then p's camera path."""
        inputs = [image, variant, elevation_deg, steps, seed, path, elevation_end_deg]
        return generate(studio, inputs, request, progress)

    event = run.click(on_gpu(orbit, gpu_seconds), [image, variant, elevation, steps, seed, path, elevation_end],
                      [video, sheet, info], api_name="orbit_tab", api_visibility="private",
                      **GPU_QUEUE)  # the public name is the hidden twin's
    event.then(lambda data: [p for k, p in ((data or {}).get("files") or {}).items() if k != "frames"], info, files,
               api_visibility="private", queue=False)
    event.then(lambda data: (data or {}).get("seed"), info, last_seed, api_visibility="private", queue=False)
    event.then(lambda: recent_orbits(studio), None, history, api_visibility="private", queue=False)

    def orbit_api(image: FileDataDict | None, variant: Any, elevation_deg: Any, steps: Any, seed: Any, path: Any,
                  elevation_end_deg: Any, request: gr.Request,
                  progress: gr.Progress = gr.Progress()) -> tuple[str, str, dict[str, Any]]:
        """Turn one picture of an object into a 21-view turntable around it with SV3D (Stable Video 3D).

        Best with a single object on a transparent or plain background: the object is centred on white at
        85 % of the square frame (576 px for SV3D). Runs on this machine's GPU, one job at a time: expect minutes.

        Args:
            image: the object: an http(s) URL or a data:image/png;base64,... string (a cut-out PNG works best).
            variant: "p" follows the camera path given by elevation_deg, path and elevation_end_deg; "u" picks its own.
            elevation_deg: camera elevation of the input view in degrees, -90 to 90 (10 is typical; 0 is level).
            steps: denoising steps, 1 to 100 (50 in the reference script; fewer is faster and rougher).
            seed: 0 to 4294967295 for a repeatable result, or -1 for a random seed (the info gives the one used).
            path: variant p only: "constant" keeps elevation_deg all round; "sine" swings to elevation_end_deg.
            elevation_end_deg: variant p, sine path only: elevation in degrees opposite the input view, -90 to 90.

        Returns:
            The orbit video (an MP4 file URL), a PNG sheet of all 21 views, and an info JSON: seed, camera, timings.
        """
        upload = user_errors("Orbit generation", lambda: uploaded_path("image", image))
        return generate(studio, [upload, variant, elevation_deg, steps, seed, path, elevation_end_deg], request,
                        progress)

    # The public endpoint reads the picture from a hidden JSON input (tabs.common explains why).
    api_event = api_endpoint(orbit_api, gpu_seconds,
                             [api_file_input("image"), variant, elevation, steps, seed, path, elevation_end],
                             [video, sheet, info], "orbit")

    wire_stop(studio, stop, [event, api_event])
    return {"image": image, "preview": shown}


def demo(studio: Studio) -> gr.Blocks:
    """This tab alone, for a quick look: ``demo(studio).launch()``."""
    return standalone(build, studio, "Cascade Studio: 3D orbit")
