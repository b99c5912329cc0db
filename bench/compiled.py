"""``--compile``: regional compilation of the prior's and decoder's repeated blocks.

Compiling the whole full prior took 96 s on its first call on an H100 (anchor JSON). The UNets
are long lists of a few block types, so compiling each block (``nn.Module.compile``, in place,
which keeps the parameters the memory manager swaps) reuses one graph per block shape and
starts much faster. Reported: the first run after compiling (compile seconds, approximately,
less the eager time) and the steady-state ratio compiled/eager. GPU mainly; on the CPU it is
skipped with its reason (inductor's CPU code path needs a C++ toolchain, and at tiny sizes a
run is milliseconds, so compile time would swamp anything it measured).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from bench.common import BenchOptions, device_name, format_table, measure, timed
from bench.models import cascade_modules, image_request, make_studio, no_progress

logger = logging.getLogger(__name__)

SKIPPED_ON_CPU = ("GPU mainly: on the CPU, inductor needs a C++ toolchain and tiny runs take milliseconds, "
                  "so compile time would swamp the figure")


def compile_blocks(unet: torch.nn.Module) -> int:
    """Compile every block of the down and up levels in place; returns how many."""
    count = 0
    for levels in (unet.down_blocks, unet.up_blocks):
        for level in levels:
            for block in level:
                block.compile()
                count += 1
    return count


def run(options: BenchOptions) -> dict[str, Any]:
    """Eager, then compiled, on one Studio (real: the full model)."""
    base = {"scenario": "compile", "device": device_name(options.device), "size": options.size}
    if options.device.type != "cuda":
        return {**base, "skipped": SKIPPED_ON_CPU}
    studio = make_studio(options, variant="full")
    request = image_request(options)
    ours = lambda: studio.registry.run("text_to_image", request, no_progress)  # noqa: E731
    ours()
    eager = measure({"eager": ours}, options)["eager"]
    modules = cascade_modules(studio.manager)
    blocks = {stage: compile_blocks(modules[stage]) for stage in ("prior", "decoder")}
    first, _ = timed(ours, options.device)
    compiled = measure({"compiled": ours}, options)["compiled"]
    studio.manager.unload("all")
    return {**base, "runs": options.runs, "blocks_compiled": blocks, "eager": eager, "compiled": compiled,
            "first_compiled_run_s": first, "compile_s": max(first - compiled["median_s"], 0.0),
            "ratio": compiled["median_s"] / eager["median_s"]}


def report(result: dict[str, Any]) -> str:
    """The printed table, or the reason it was skipped."""
    if result.get("skipped"):
        return f"compile: skipped ({result['skipped']})"
    rows = [["variant", "seconds", "ratio"],
            ["eager", f"{result['eager']['median_s']:.3f}", "1.000"],
            ["regional compile", f"{result['compiled']['median_s']:.3f}", f"{result['ratio']:.3f}"]]
    head = (f"compile: {sum(result['blocks_compiled'].values())} blocks compiled on {result['device']}; "
            f"about {result['compile_s']:.1f} s to compile (first run {result['first_compiled_run_s']:.1f} s)")
    return "\n".join([head, format_table(rows)])
