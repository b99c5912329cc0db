"""Audio tab: Stable Audio Open, text to sound.

``/generate_audio`` takes exactly DESIGN.md's six inputs, in order (prompt, negative_prompt,
seconds, steps, guidance, seed), and returns a 44.1 kHz stereo FLAC and the info. On screen the
length, steps and guidance are sliders; gradio checks a slider's range itself with a message that
names no field, so the public endpoint reads hidden ``gr.Number`` twins instead and our validation
(``AudioRequest.build``, which names the field) answers API clients, as in the Video tab.

The result plays in the page and shows as a waveform picture (people look at a sound's shape:
where it is loud, where it goes quiet) with the seed used in the info. FLAC is the default file
(lossless, about half a WAV's size); the format choice is a UI setting that travels as session
state, which the API leaves out, so scripts always get FLAC. Ctrl+Enter in the prompt generates,
as in the other tabs (``tabs.keys``).
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from backends.audio.requests import MAX_GUIDANCE, MAX_SECONDS, MAX_STEPS, AudioRequest
from backends.runtime.studio import Studio
from tabs.common import (
    GPU_QUEUE,
    Stopped,
    api_endpoint,
    gradio_progress,
    on_gpu,
    on_page_load,
    session_of,
    standalone,
    user_errors,
    wire_stop,
)

logger = logging.getLogger(__name__)

RECENT = 12
FORMATS = ("flac", "wav")


def generate(studio: Studio, inputs: list[Any], fmt: str, request: gr.Request | None,
             progress: gr.Progress) -> tuple[Any, Any, dict[str, Any]]:
    """Validate, run text-to-audio through the registry, save atomically; the file, its waveform, the info."""
    session = session_of(request)

    def work() -> tuple[Any, Any, dict[str, Any]]:
        req = AudioRequest.build(*inputs)
        control = studio.start_job(session)
        try:
            report = gradio_progress(progress, (req.steps,), on_fraction=control.progressed)
            result = studio.registry.run("text_to_audio", req, control.wrap(report))
        finally:
            studio.finish_job(session, control)
        info = {**result.info, "seed": req.seed, "preset": studio.preset.name}
        paths = studio.outputs.save_audio(result.audio, result.sample_rate, info,
                                          fmt=fmt if fmt in FORMATS else "flac")
        info["files"] = {kind: str(path) for kind, path in paths.items()}
        return str(paths["audio"]), str(paths["waveform"]), info

    try:
        return user_errors("Audio generation", work)
    except Stopped:
        return gr.skip(), gr.skip(), gr.skip()  # the previous result stays; nothing was saved


def recent_sounds(studio: Studio) -> list[tuple[str, str]]:
    """The newest results' waveforms, each captioned with its file's name."""
    found = studio.outputs.recent(limit=RECENT, suffixes=(".flac", ".wav"))
    return [(str(path.with_suffix(".webp")), path.name) for path in found if path.with_suffix(".webp").is_file()]


def gpu_seconds(prompt: Any, negative: Any, seconds: Any, steps: Any, *_: Any, **__: Any) -> int:
    """ZeroGPU duration: a cold load (~20 s for 3.5 GB) plus about 0.05 s a step per 10 s of sound
    (the 1.1B DiT on a data-centre GPU in fp16, with guidance), capped."""
    try:
        work = float(steps) * max(1.0, float(seconds)) / 10.0
    except (TypeError, ValueError):
        return 60  # invalid input fails fast in the handler
    return int(min(300, max(30, 20 + 0.05 * work)))


def build(studio: Studio) -> dict[str, gr.Component]:
    """Build the tab's components and wire its events (call inside a ``gr.Blocks``)."""
    spec = studio.registry.spec("audio")
    defaults = studio.preset.settings.audio.defaults
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="audio-prompt",
                                placeholder="128 BPM tech house drum loop, punchy kick")
            negative = gr.Textbox(label="Negative prompt", value=defaults.negative_prompt, lines=1)
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="audio-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="audio-stop")
            seconds = gr.Slider(0.5, MAX_SECONDS, value=defaults.seconds, step=0.5, label="Length (seconds)",
                                info=f"up to {MAX_SECONDS:g} s, the model's limit")
            with gr.Accordion("Advanced", open=False):
                with gr.Row():
                    steps = gr.Slider(1, MAX_STEPS, value=defaults.steps, step=1, label="Steps")
                    guidance = gr.Slider(0, MAX_GUIDANCE, value=defaults.guidance, step=0.1, label="Guidance")
                fmt = gr.Radio(list(FORMATS), value="flac", label="File format",
                               info="FLAC is lossless and about half the size of WAV")
            with gr.Row():
                seed = gr.Number(value=-1, label="Seed", info="-1 picks a random seed", scale=3)
                random_seed = gr.Button("Random", scale=1, size="sm")
                reuse_seed = gr.Button("Reuse last", scale=1, size="sm")
            gr.Markdown(f"License: [{spec.license}]({spec.license_url})", elem_id="audio-license")
        with gr.Column(scale=3):
            player = gr.Audio(label="Sound", type="filepath", interactive=False, elem_id="audio-result")
            picture = gr.Image(label="Waveform (left channel above, right below)", type="filepath",
                               interactive=False, height=200, elem_id="audio-waveform")
            files = gr.File(label="Download (audio, waveform, parameters)", file_count="multiple",
                            interactive=False)
            info = gr.JSON(label="Info (seed used, length, timings, preset, model)")
    with gr.Accordion("Recent sounds", open=False):
        history = gr.Gallery(label="Recent", columns=4, height=200, show_label=False, object_fit="contain",
                             elem_id="audio-history", interactive=False)
    # What the public endpoint reads instead of the sliders (see the module docstring).
    api_numbers = [
        gr.Number(value=defaults.seconds, label="Length (seconds)", info=f"0–{MAX_SECONDS:g}", visible=False),
        gr.Number(value=defaults.steps, label="Steps", info=f"1–{MAX_STEPS}", visible=False),
        gr.Number(value=defaults.guidance, label="Guidance", info=f"0–{MAX_GUIDANCE:g}", visible=False),
    ]
    on_page_load(lambda: recent_sounds(studio), history)
    fmt_state = gr.State("flac")
    last_seed = gr.State(value=None)
    fmt.change(lambda value: value, fmt, fmt_state, api_visibility="private", queue=False)
    random_seed.click(lambda: -1, None, seed, api_visibility="private", queue=False)
    reuse_seed.click(lambda last: -1 if last is None else last, last_seed, seed, api_visibility="private",
                     queue=False)

    def generate_audio_tab(prompt: Any, negative_prompt: Any, seconds: Any, steps: Any, guidance: Any, seed: Any,
                           fmt: Any, request: gr.Request,
                           progress: gr.Progress = gr.Progress()) -> tuple[Any, Any, dict[str, Any]]:
        return generate(studio, [prompt, negative_prompt, seconds, steps, guidance, seed], fmt, request, progress)

    event = run.click(on_gpu(generate_audio_tab, gpu_seconds), [prompt, negative, seconds, steps, guidance, seed,
                                                                fmt_state], [player, picture, info],
                      api_visibility="private", preprocess=False, **GPU_QUEUE)

    def generate_audio(prompt: Any, negative_prompt: Any, seconds: Any, steps: Any, guidance: Any, seed: Any,
                       request: gr.Request, progress: gr.Progress = gr.Progress()) -> tuple[Any, dict[str, Any]]:
        """Text to sound with Stable Audio Open: sound effects, ambiences, loops and short music, not speech.

        Runs on this machine's GPU, one job at a time behind any other; left-out arguments take this server's
        preset defaults. A bad value is refused, naming the field and its range.

        Args:
            prompt: the sound, e.g. "rain on a tin roof, distant thunder" or "128 BPM techno drum loop" (not empty).
            negative_prompt: what to steer away from ("Low quality." is the official default); empty for nothing.
            seconds: length of the clip in seconds, more than 0 and at most 47.
            steps: denoising steps, 1 to 500 (the official example uses 200; fewer is faster and rougher).
            guidance: prompt guidance, 0 to 25 (7 is the official default); 1 or less ignores negative_prompt.
            seed: 0 to 4294967295 for a repeatable result, or -1 for a random seed (the info gives the one used).

        Returns:
            The sound (a 44.1 kHz stereo FLAC file URL) and an info JSON: seed used, length, timings, saved files.
        """
        sound, _, data = generate(studio, [prompt, negative_prompt, seconds, steps, guidance, seed], "flac",
                                  request, progress)
        return sound, data

    api_event = api_endpoint(generate_audio, gpu_seconds, [prompt, negative, *api_numbers, seed], [player, info],
                             "generate_audio")
    for job in (event, api_event):
        job.then(lambda data: [p for p in ((data or {}).get("files") or {}).values()], info, files,
                 api_visibility="private", queue=False)
        job.then(lambda data: (data or {}).get("seed"), info, last_seed, api_visibility="private", queue=False)
        job.then(lambda: recent_sounds(studio), None, history, api_visibility="private", queue=False)
    wire_stop(studio, stop, [event, api_event])
    return {"prompt": prompt}


def demo(studio: Studio) -> gr.Blocks:
    """This tab alone, for a quick look: ``demo(studio).launch()``."""
    return standalone(build, studio, "Cascade Studio: Audio")
