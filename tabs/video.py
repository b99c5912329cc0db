"""Video tab: Stable Video Diffusion image-to-video.

The ``/generate_video`` event takes exactly DESIGN.md's eight inputs, in order. On screen, the inputs
with a fixed range (frames, fps, motion, noise augmentation, steps) are sliders. Gradio checks a
slider's range itself, with a message that names no field, so the public endpoint reads hidden
``gr.Number`` twins of them instead, and our validation (which names the field) answers API clients;
the decode chunk (its top is the frame count) and the seed stay numbers.

The picture comes in through ``gr.File``, not ``gr.Image``: gradio 6.31's ``gr.Image`` opens every
upload with Pillow before the handler runs, so a damaged or oversized file fails there with a
message that API clients never see ("has not enabled verbose error reporting"). With ``gr.File``
our validation reads the file and says what is wrong. A preview beside it shows the picture as the
model will see it (fitted, transparency on white); a picture that cannot be used is refused right
there, with a warning naming the field, and checked again when the job starts. The public
``/generate_video`` reads the picture from a hidden JSON input instead of the ``gr.File``
(``tabs.common`` explains why); the tab's own button runs a private twin of the same handler.

Generate and Stop sit under the picture, before the settings, so a phone shows them on its first
screen.

The crop/pad choice and the GIF checkbox are UI settings. They reach the handler through
``gr.State`` values, which Gradio leaves out of the API, so scripts call ``/generate_video`` with
the eight contract inputs and get the preset's fit and no GIF.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
from gradio.data_classes import FileDataDict
from PIL import Image

from backends.runtime.errors import InputError
from backends.runtime.studio import Studio
from backends.svd.requests import (
    FITS,
    MAX_FPS,
    MAX_FRAMES,
    MAX_MOTION_BUCKET,
    MAX_STEPS,
    MIN_FPS,
    VideoRequest,
    prepare_image,
)
from tabs.common import (
    GPU_QUEUE,
    Stopped,
    api_endpoint,
    api_file_input,
    gradio_progress,
    labelled,
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


def generate(studio: Studio, inputs: list[Any], fit: str, gif: bool, request: gr.Request | None,
             progress: gr.Progress) -> tuple[str, dict[str, Any]]:
    """Validate, run image-to-video through the registry, save atomically; return mp4 + info."""
    session = session_of(request)
    defaults = studio.preset.settings.svd.defaults

    def work() -> tuple[str, dict[str, Any]]:
        req = VideoRequest.build(*inputs, fit=fit, width=defaults.width, height=defaults.height)
        control = studio.start_job(session)
        try:
            # Denoising, then decoding frame by frame: one bar over both.
            report = gradio_progress(progress, (req.steps, req.num_frames), on_fraction=control.progressed)
            result = studio.registry.run("image_to_video", req, control.wrap(report))
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


def preview(studio: Studio, image: Any, fit: str) -> tuple[str | None, Any]:
    """The picture as the model will see it (its file: ``common.picture_file``), and the input's
    new value (``gr.skip()``: kept).

    An unusable picture (unreadable, too small, too large) is refused when it is chosen: a
    warning naming the field (not an error dialog), no preview, and the file taken back out of
    the input, so the user picks another and the tab stays usable. Generate checks it again.
    """
    if image is None:
        return None, gr.skip()
    defaults = studio.preset.settings.svd.defaults

    def fitted() -> Image.Image | None:
        try:
            return prepare_image(image, fit, defaults.width, defaults.height)[0]
        except InputError as error:  # the user's to fix: say so now, naming the field
            gr.Warning(labelled(error))
            return None

    picture = user_errors("Video input", fitted)
    return picture_file(picture), (gr.skip() if picture is not None else None)


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
            with gr.Row():
                # min_width 120 (not 160) keeps the two side by side on a phone.
                image = gr.File(label="Input picture (PNG, JPEG, WebP)", file_types=["image"], type="filepath",
                                height=160, min_width=120, elem_id="video-image")
                shown = gr.Image(label=f"What the model sees ({long}×{short} or {short}×{long})", type="pil",
                                 interactive=False, height=160, min_width=120, elem_id="video-preview")
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="video-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="video-stop")
            fit = gr.Radio(list(FITS), value=defaults.fit, label="Fit to the model size",
                           info="crop fills the frame; pad keeps the whole picture on white")
            num_frames = gr.Slider(1, MAX_FRAMES, value=defaults.num_frames, step=1, label="Frames")
            with gr.Row():
                fps = gr.Slider(MIN_FPS, MAX_FPS, value=defaults.fps, step=1, label="FPS")
                motion = gr.Slider(1, MAX_MOTION_BUCKET, value=defaults.motion_bucket_id, step=1, label="Motion",
                                   info="more is livelier")
            with gr.Accordion("Advanced", open=False):
                with gr.Row():
                    noise = gr.Slider(0, 1, value=defaults.noise_aug_strength, step=0.01,
                                      label="Noise augmentation", info="more motion, less like the picture")
                    steps = gr.Slider(1, MAX_STEPS, value=defaults.steps, step=1, label="Steps")
                    chunk = gr.Number(value=defaults.decode_chunk_size, label="Decode chunk",
                                      info="frames decoded at once; 0 = from free VRAM")
                gif = gr.Checkbox(value=False, label="Also save a GIF")
            with gr.Row():
                seed = gr.Number(value=-1, label="Seed", info="-1 picks a random seed", scale=3)
                random_seed = gr.Button("Random", scale=1, size="sm")
                reuse_seed = gr.Button("Reuse last", scale=1, size="sm")
        with gr.Column(scale=3):
            video = gr.Video(label="Video", format="mp4", autoplay=True, loop=True, elem_id="video-result")
            files = gr.File(label="Download (MP4, parameters, GIF)", file_count="multiple", interactive=False)
            info = gr.JSON(label="Info (seed used, chunk sizes, timings, preset, model)")
    with gr.Accordion("Recent videos", open=False):
        history = gr.Gallery(label="Recent", columns=4, height=240, show_label=False, object_fit="contain",
                             elem_id="video-history")
    # What the public endpoint reads instead of the sliders (see the module docstring); the same
    # labels, defaults and notes as the numbers it had before, so its API description is unchanged.
    api_numbers = [
        gr.Number(value=defaults.num_frames, label="Frames", info=f"1–{MAX_FRAMES}", visible=False),
        gr.Number(value=defaults.fps, label="FPS", info=f"{MIN_FPS}–{MAX_FPS}", visible=False),
        gr.Number(value=defaults.motion_bucket_id, label="Motion", info="1–255; more is livelier", visible=False),
        gr.Number(value=defaults.noise_aug_strength, label="Noise augmentation",
                  info="0–1; more motion, less like the picture", visible=False),
        gr.Number(value=defaults.steps, label="Steps", info=f"1–{MAX_STEPS}", visible=False),
    ]
    on_page_load(lambda: recent_videos(studio), history)
    # UI-only settings travel as session state, which the API leaves out (see the module docstring).
    fit_state = gr.State(defaults.fit)
    gif_state = gr.State(False)
    last_seed = gr.State(value=None)

    fit.change(lambda value: value, fit, fit_state, api_visibility="private", queue=False)
    gif.change(lambda value: bool(value), gif, gif_state, api_visibility="private", queue=False)
    for trigger in (image.change, fit.change):
        # Queued (gradio shows gr.Warning only from queued events), in its own group: never behind a job.
        trigger(lambda path, how: preview(studio, path, how), [image, fit], [shown, image],
                api_visibility="private", concurrency_limit=None, show_progress="minimal")
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

    def generate_video_api(image: FileDataDict | None, num_frames: Any, fps: Any, motion_bucket_id: Any,
                           noise_aug_strength: Any, steps: Any, decode_chunk_size: Any, seed: Any, fit: str,
                           gif: bool, request: gr.Request,
                           progress: gr.Progress = gr.Progress()) -> tuple[str, dict[str, Any]]:
        """Animate a still picture into a short silent video clip with Stable Video Diffusion (image to video).

        The picture is the first frame; the model invents the motion (no prompt). Landscape and square pictures
        are cropped to the model's landscape size (1024x576 for SVD), portrait ones to its portrait size. Runs on
        this machine's GPU, one job at a time: expect minutes for 25 frames at full size.

        Args:
            image: the first frame: an http(s) URL or a data:image/png;base64,... string (PNG, JPEG or WebP, 64 px+).
            num_frames: frames to generate, 1 to 50 (SVD is trained on 14, SVD-XT on 25).
            fps: frames per second of the MP4, 5 to 30; also tells the model how fast things move.
            motion_bucket_id: how much motion, 1 to 255 (127 is the official default; more is livelier).
            noise_aug_strength: noise added to the picture, 0 to 1 (0.02 is typical); more motion, less likeness.
            steps: denoising steps, 1 to 100 (25 for SVD, 30 for SVD-XT officially).
            decode_chunk_size: frames decoded at once, 0 to num_frames; 0 picks it from free GPU memory.
            seed: 0 to 4294967295 for a repeatable result, or -1 for a random seed (the info gives the one used).

        Returns:
            The video (an H.264 MP4 file URL) and an info JSON: seed used, frames, fps, size, timings, saved files.
        """
        path = user_errors("Video generation", lambda: uploaded_path("image", image))
        inputs = [path, num_frames, fps, motion_bucket_id, noise_aug_strength, steps, decode_chunk_size, seed]
        return generate(studio, inputs, fit, gif, request, progress)

    # The public endpoint reads the picture from a hidden JSON input (tabs.common explains why).
    api_inputs = [api_file_input("image"), *api_numbers, chunk, seed, fit_state, gif_state]
    api_event = api_endpoint(generate_video_api, gpu_seconds, api_inputs, [video, info], "generate_video")

    wire_stop(studio, stop, [event, api_event])
    return {"image": image, "preview": shown}


def demo(studio: Studio) -> gr.Blocks:
    """This tab alone, for a quick look: ``demo(studio).launch()``."""
    return standalone(build, studio, "Cascade Studio: Video")
