"""Never out of memory: every tab's default request on cards capped at 8, 12 and 16 GB (CUDA only).

Each cap is set with ``torch.cuda.set_per_process_memory_fraction`` and also given to the
manager as its budget (pynvml sees the whole card, not the process's fraction; a user with that
card would see its real size). The preset is the one ``auto`` picks for that size, with its
defaults; the modules are real-size with random weights (``bench.models``: the preset's Stable
Cascade variant, SVD-XT, SV3D_p, the 1.6B StableLM shape for chat, the only LM shape in NOTES.md,
and SD3.5 Medium and SDXL, ``bench.sd_models``). The SD request is the preset's default SD model
(``sd_model``, else the first offered: SDXL for lite at 8 and 12 GB, SD3.5 Medium for bf16 at 16)
at its defaults; SD3.5's T5 follows the preset where it runs on the device and is off where the
preset puts it on the CPU (it takes no device memory there, and the backend loads that copy
itself, so no real-size one can stand in). A model the real-size run does not build (SD3.5
Large) is an error in the outcomes, not a silent tiny run.
Goal: zero OOMs, every request completes. On the CPU there is no device memory to cap, so the
scenario records that it needs CUDA instead of failing.
"""

from __future__ import annotations

import gc
import logging
import traceback
from typing import Any

import torch
from PIL import Image

from bench.common import BenchOptions, device_name, format_table
from bench.models import make_studio, no_progress

logger = logging.getLogger(__name__)

GB = 1024**3
CAPS_GB = (8, 12, 16)
NEEDS_CUDA = "needs CUDA: torch.cuda.set_per_process_memory_fraction caps a GPU; skipped on the CPU"


def offered_sd_models(preset: Any) -> dict[str, str]:
    """The SD models this preset offers, each with its family (``Registry.models``' rule)."""
    from backends.families import FAMILIES

    return {model: spec.name for spec in FAMILIES if spec.models
            for model in getattr(getattr(preset, spec.settings_key), "offer", spec.models)}


def default_sd_model(preset: Any) -> str:
    """What an SD endpoint's empty ``model`` means for this preset: ``sd_model``, else the first
    offered model (``Registry.default_model``'s rule; a test holds the two equal)."""
    return preset.sd_model or next(iter(offered_sd_models(preset)))


def sd_default_request(preset: Any) -> tuple[str, Any]:
    """The Image tab's SD request at the preset's default SD model and that model's defaults."""
    from backends.runtime.image_requests import SdTextToImageRequest
    from backends.sd3.requests import model_defaults

    offered, model = offered_sd_models(preset), default_sd_model(preset)
    family = offered[model]
    settings = getattr(preset, family)
    d = settings.defaults if family == "sdxl" else model_defaults(settings, model)
    request = SdTextToImageRequest.build("a red lighthouse on a cliff at dusk", "", d.width, d.height, d.steps,
                                         d.guidance, 1, 7, "", offered=list(offered), default_model=model)
    return f"{family}_text_to_image", request


def default_requests(preset: Any) -> dict[str, tuple[str, Any, bool]]:
    """Tab -> (task, its default request, streamed?) at the preset's defaults."""
    from backends.cascade.requests import TextToImageRequest
    from backends.stablelm.requests import ChatRequest
    from backends.sv3d.requests import OrbitRequest
    from backends.svd.requests import VideoRequest

    c, v, s, o = preset.cascade.defaults, preset.svd.defaults, preset.stablelm.defaults, preset.sv3d.defaults
    image = TextToImageRequest.build("a red lighthouse on a cliff at dusk", "", c.width, c.height, c.prior_steps,
                                     c.decoder_steps, c.prior_guidance, c.decoder_guidance, c.num_images, 7)
    picture = Image.new("RGB", (v.width, v.height), (200, 80, 40))
    video = VideoRequest.build(picture, v.num_frames, v.fps, v.motion_bucket_id, v.noise_aug_strength, v.steps,
                               v.decode_chunk_size, 3, width=v.width, height=v.height)
    orbit = OrbitRequest.build(Image.new("RGB", (o.size, o.size), (240, 240, 240)), o.variant, o.elevation_deg,
                               o.steps, 5, o.path, o.elevation_end_deg, size=o.size, num_frames=o.num_frames)
    chat = ChatRequest.build("Tell me about lighthouses.", [], None, s.temperature, s.top_p, s.max_new_tokens, seed=1)
    sd_task, sd = sd_default_request(preset)
    return {"image": ("text_to_image", image, False), "sd": (sd_task, sd, False),
            "video": ("image_to_video", video, False), "orbit": ("orbit", orbit, False), "chat": ("chat", chat, True)}


def run_cap(options: BenchOptions, cap_gb: int) -> dict[str, Any]:
    """Every tab's default request under one cap; an OOM is counted, never raised."""
    from backends.families import PresetSettings, load_preset
    from backends.runtime import presets
    from backends.runtime.errors import OutOfMemory
    from backends.sd3.requests import t5_placement

    cap = cap_gb * GB
    total = torch.cuda.get_device_properties(options.device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), options.device)
    name = presets.pick_auto(cap, PresetSettings)
    preset = load_preset(name).settings
    variant = "lite" if preset.cascade.prior.subfolder == "prior_lite" else "full"
    t5 = "device" if t5_placement(preset.sd3) == "device" else "off"  # cpu: see the module docstring
    studio = make_studio(options, budget_bytes=cap, variant=variant, sd3_t5=t5)
    outcomes: dict[str, str] = {}
    for tab, (task, request, streamed) in default_requests(preset).items():
        try:
            if streamed:
                for _ in studio.registry.stream(task, request, no_progress):
                    pass
            else:
                studio.registry.run(task, request, no_progress)
            outcomes[tab] = "completed"
        except (OutOfMemory, torch.OutOfMemoryError) as error:
            logger.warning("never_oom %d GB %s: %s", cap_gb, tab, error)
            outcomes[tab] = f"oom: {str(error).splitlines()[0]}"
        except Exception as error:  # reported, not raised: one failing tab must not hide the others
            outcomes[tab] = f"error: {type(error).__name__}: {error}"
            logger.error("never_oom %d GB %s failed:\n%s", cap_gb, tab, traceback.format_exc())
    studio.manager.unload("all")
    del studio
    gc.collect()
    torch.cuda.empty_cache()
    peak = torch.cuda.max_memory_allocated(options.device)
    return {"cap_gb": cap_gb, "preset": name, "variant": variant, "sd3_t5": t5, "peak_bytes": peak,
            "outcomes": outcomes, "completed": sum(v == "completed" for v in outcomes.values()),
            "ooms": sum(v.startswith("oom") for v in outcomes.values()),
            "errors": sum(v.startswith("error") for v in outcomes.values())}


def run(options: BenchOptions) -> dict[str, Any]:
    """All caps on CUDA; on the CPU a ``skipped`` entry that says why."""
    base = {"scenario": "never_oom", "device": device_name(options.device), "size": options.size}
    if options.device.type != "cuda":
        return {**base, "skipped": NEEDS_CUDA, "caps": []}
    if options.size != "real":
        return {**base, "skipped": "needs --size real: tiny models fit any cap", "caps": []}
    caps = []
    try:
        for cap_gb in CAPS_GB:
            torch.cuda.reset_peak_memory_stats(options.device)
            caps.append(run_cap(options, cap_gb))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, options.device)
    return {**base, "caps": caps, "completed": sum(c["completed"] for c in caps), "ooms": sum(c["ooms"] for c in caps),
            "requests": sum(len(c["outcomes"]) for c in caps)}


def report(result: dict[str, Any]) -> str:
    """The printed table, or the reason it was skipped."""
    if result.get("skipped"):
        return f"never_oom: skipped ({result['skipped']})"
    rows = [["cap", "preset", "completed", "OOMs", "errors", "peak (MB)", "outcomes"]]
    for c in result["caps"]:
        rows.append([f"{c['cap_gb']} GB", c["preset"], str(c["completed"]), str(c["ooms"]), str(c["errors"]),
                     f"{c['peak_bytes'] / 2**20:.0f}", "; ".join(f"{k}: {v}" for k, v in c["outcomes"].items())])
    head = f"never_oom: every tab's default request under a memory cap on {result['device']} (goal: zero OOMs)"
    return "\n".join([head, format_table(rows)])
