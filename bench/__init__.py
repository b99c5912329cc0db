"""Benchmarks: ``python -m bench --device cpu|cuda --size tiny|real [--scenarios a,b] [--compile]``.

One module per scenario (``bench/chat.py``, …), each with ``run(options) -> dict`` and
``report(result) -> str``; ``SCENARIOS`` maps names to modules, imported only when chosen.
``--size tiny`` uses the tiny random-weight models (any machine, seconds); ``--size real`` builds
random-weight models with the real architectures on a GPU (no download), so figures are real-size
speeds of our code, not of any checkpoint's outputs. On the CPU, ``--size real`` runs
``real_sizes`` by default: every family once, at its smallest real-size request, one process each;
``audio`` may be named there too (one short real-size request, ours only).
``cluster`` (``--scenarios cluster``) times a tiny mix on Ray Serve replicas; nothing imports Ray
unless it is named, and then only its child process.
"""

from __future__ import annotations

#: Scenario name -> module with ``run(options)`` and ``report(result)``, in the order they run.
SCENARIOS: dict[str, str] = {
    "image_resident": "bench.image_resident",
    "image_offload": "bench.image_offload",
    "switching": "bench.switching",
    "chat": "bench.chat",
    # Stable Audio Open against StableAudioPipeline; also runs at --size real --device cpu when named.
    "audio": "bench.audio",
    "never_oom": "bench.never_oom",
    "compile": "bench.compiled",
    # Runs when named, and by default for --size real --device cpu; otherwise listed as skipped.
    "real_sizes": "bench.real_sizes",
    # Starts Ray (in a child process): runs when named, otherwise listed as skipped.
    "cluster": "bench.cluster",
}
#: Run only when asked for (``--compile`` or by name): compiling is minutes on a GPU.
OPTIONAL: frozenset[str] = frozenset({"compile"})
