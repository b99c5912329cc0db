"""Video tab: Stable Video Diffusion image-to-video.

The ``/generate_video`` event takes exactly DESIGN.md's eight inputs, in order. Numeric inputs are
plain ``gr.Number`` fields, so our validation (which names the field) does the range checks.

The picture comes in through ``gr.File``, not ``gr.Image``: gradio 6.31's ``gr.Image`` opens every
upload with Pillow before the handler runs, so a damaged or oversized file fails there with a
message that API clients never see ("has not enabled verbose error reporting"). With ``gr.File``
our validation reads the file and says what is wrong. A preview beside it shows the picture as the
model will see it (fitted, transparency on white). The public ``/generate_video`` reads the picture
from a hidden JSON input instead of the ``gr.File`` (``tabs.common`` explains why); the tab's own
button runs a private twin of the same handler.

The crop/pad choice and the GIF checkbox are UI settings. They reach the handler through
``gr.State`` values, which Gradio leaves out of the API, so scripts call ``/generate_video`` with
the eight contract inputs and get the preset's fit and no GIF.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
from PIL import Image

from backends.runtime.studio import Studio
from backends.svd.requests import FITS, MAX_FPS, MAX_FRAMES, MAX_STEPS, MIN_FPS, VideoRequest, prepare_image
from tabs.common import (
    GPU_QUEUE,
    Stopped,
    api_endpoint,
    api_file_input,
    gradio_progress,
    on_gpu,
    on_page_load,
    session_of,
    standalone,
    uploaded_path,
    user_errors,
    wire_stop,
)

logger = logging.getLogger(__name__)

RECENT = 12


def generate(studio: Studio, inputs: list[Any], fit: str, gif: bool, request: gr.Request | None,
             progress: gr.Progress) -> tuple[str, dict[str, Any]]:
    """Validate, run image-to-video through the registry, save atomically; return mp4 + info."""
    session = session_of(request)
    defaults = studio.preset.settings.svd.defaults

    def work() -> tuple[str, dict[str, Any]]:
        req = VideoRequest.build(*inputs, fit=fit, width=defaults.width, height=defaults.height)
        control = studio.start_job(session)
        try:
            result = studio.registry.run("image_to_video", req, control.wrap(gradio_progress(progress)))
        finally:
            studio.finish_job(session, control)
        info = {**result.info, "seed": req.seed, "preset": studio.preset.name}
        paths = studio.outputs.save_video(result.frames, result.fps, info, gif=bool(gif))
        info["files"] = {kind: str(path) for kind, path in paths.items()}
        return str(paths["video"]), info

    try:
        return user_errors("Video generation", work)
    except Stopped:
        return gr.skip(), gr.skip()  # the previous video stays; nothing was saved


def preview(studio: Studio, image: Any, fit: str) -> Image.Image | None:
    """The picture as the model will see it; None when no file is chosen."""
    if image is None:
        return None
    defaults = studio.preset.settings.svd.defaults
    fitted, _, _ = user_errors("Video input", lambda: prepare_image(image, fit, defaults.width, defaults.height))
    return fitted


def recent_videos(studio: Studio) -> list[str]:
    return [str(p) for p in studio.outputs.recent(limit=RECENT, suffixes=(".mp4",))]


def gpu_seconds(image: Any, num_frames: Any, fps: Any, motion_bucket_id: Any, noise_aug_strength: Any,
                steps: Any, *_: Any, **__: Any) -> int:
    """ZeroGPU duration: a cold load (~40 s for 4.5 GB) plus about 0.06 s per frame and step.

    0.06 s is a generous figure for SVD's UNet on one frame at 1024x576 in fp16 with guidance on
    a data-centre GPU, decoding included; the cap keeps one request from holding the queue.
    """
    try:
        work = float(num_frames) * float(steps)
    except (TypeError, ValueError):
        return 60  # invalid input fails fast in the handler
    return int(min(300, max(60, 40 + 0.06 * work)))


def build(studio: Studio) -> dict[str, gr.Component]:
    """Build the tab's components and wire its events (call inside a ``gr.Blocks``).

    Returns:
        Components other tabs may target: ``image`` (the picture input; set it to a file path,
        e.g. from the Image tab's gallery) and ``preview``.
    """
    settings = studio.preset.settings.svd
    defaults = settings.defaults
    long, short = max(defaults.width, defaults.height), min(defaults.width, defaults.height)
    with gr.Row():
        with gr.Column(scale=2):
            image = gr.File(label="Input picture (PNG, JPEG, WebP)", file_types=["image"], type="filepath",
                            elem_id="video-image")
            shown = gr.Image(label=f"What the model sees ({long}×{short} or {short}×{long})", type="pil",
                             interactive=False, height=240, elem_id="video-preview")
            fit = gr.Radio(list(FITS), value=defaults.fit, label="Fit to the model size",
                           info="crop fills the frame; pad keeps the whole picture on white")
            with gr.Row():
                num_frames = gr.Number(value=defaults.num_frames, label="Frames", info=f"1–{MAX_FRAMES}")
                fps = gr.Number(value=defaults.fps, label="FPS", info=f"{MIN_FPS}–{MAX_FPS}")
                motion = gr.Number(value=defaults.motion_bucket_id, label="Motion", info="1–255; more is livelier")
            with gr.Accordion("Advanced", open=False):
                with gr.Row():
                    noise = gr.Number(value=defaults.noise_aug_strength, label="Noise augmentation",
                                      info="0–1; more motion, less like the picture")
                    steps = gr.Number(value=defaults.steps, label="Steps", info=f"1–{MAX_STEPS}")
                    chunk = gr.Number(value=defaults.decode_chunk_size, label="Decode chunk",
                                      info="frames decoded at once; 0 = from free VRAM")
                gif = gr.Checkbox(value=False, label="Also save a GIF")
            with gr.Row():
                seed = gr.Number(value=-1, label="Seed", info="-1 picks a random seed", scale=3)
                random_seed = gr.Button("Random", scale=1, size="sm")
                reuse_seed = gr.Button("Reuse last", scale=1, size="sm")
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="video-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="video-stop")
        with gr.Column(scale=3):
            video = gr.Video(label="Video", format="mp4", autoplay=True, loop=True, elem_id="video-result")
            files = gr.File(label="Download (MP4, parameters, GIF)", file_count="multiple", interactive=False)
            info = gr.JSON(label="Info (seed used, chunk sizes, timings, preset, model)")
    with gr.Accordion("Recent videos", open=False):
        history = gr.Gallery(label="Recent", columns=4, height=240, show_label=False)
    on_page_load(lambda: recent_videos(studio), history)
    # UI-only settings travel as session state, which the API leaves out (see the module docstring).
    fit_state = gr.State(defaults.fit)
    gif_state = gr.State(False)
    last_seed = gr.State(value=None)

    fit.change(lambda value: value, fit, fit_state, api_visibility="private", queue=False)
    gif.change(lambda value: bool(value), gif, gif_state, api_visibility="private", queue=False)
    for trigger in (image.change, fit.change):
        trigger(lambda path, how: preview(studio, path, how), [image, fit], shown, api_visibility="private")
    random_seed.click(lambda: -1, None, seed, api_visibility="private", queue=False)
    reuse_seed.click(lambda last: -1 if last is None else last, last_seed, seed, api_visibility="private",
                     queue=False)

    def generate_video(image: Any, num_frames: Any, fps: Any, motion_bucket_id: Any, noise_aug_strength: Any,
                       steps: Any, decode_chunk_size: Any, seed: Any, fit: str, gif: bool, request: gr.Request,
                       progress: gr.Progress = gr.Progress()) -> tuple[str, dict[str, Any]]:
        """Image to video: the eight inputs of DESIGN.md; returns the MP4 and the info JSON."""
        inputs = [image, num_frames, fps, motion_bucket_id, noise_aug_strength, steps, decode_chunk_size, seed]
        return generate(studio, inputs, fit, gif, request, progress)

    inputs = [image, num_frames, fps, motion, noise, steps, chunk, seed, fit_state, gif_state]
    event = run.click(on_gpu(generate_video, gpu_seconds), inputs, [video, info], api_name="generate_video_tab",
                      api_visibility="private", **GPU_QUEUE)  # the public name is the hidden twin's
    event.then(lambda data: [path for path in ((data or {}).get("files") or {}).values()], info, files,
               api_visibility="private", queue=False)
    event.then(lambda data: (data or {}).get("seed"), info, last_seed, api_visibility="private", queue=False)
    event.then(lambda: recent_videos(studio), None, history, api_visibility="private", queue=False)

    def generate_video_api(image: Any, num_frames: Any, fps: Any, motion_bucket_id: Any, noise_aug_strength: Any,
                           steps: Any, decode_chunk_size: Any, seed: Any, fit: str, gif: bool, request: gr.Request,
                           progress: gr.Progress = gr.Progress()) -> tuple[str, dict[str, Any]]:
        """Image to video (image: gradio_client's handle_file("photo.png")); returns the MP4 and the info."""
        path = user_errors("Video generation", lambda: uploaded_path("image", image))
        inputs = [path, num_frames, fps, motion_bucket_id, noise_aug_strength, steps, decode_chunk_size, seed]
        return generate(studio, inputs, fit, gif, request, progress)

    # The public endpoint reads the picture from a hidden JSON input (tabs.common explains why).
    api_event = api_endpoint(generate_video_api, gpu_seconds, [api_file_input("image"), *inputs[1:]], [video, info],
                             "generate_video")

    wire_stop(studio, stop, [event, api_event])
    return {"image": image, "preview": shown}


def demo(studio: Studio) -> gr.Blocks:
    """This tab alone, for a quick look: ``demo(studio).launch()``."""
    return standalone(build, studio, "Cascade Studio: Video")
