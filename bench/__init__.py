"""Benchmarks: ``python -m bench --device cpu|cuda --size tiny|real --scenarios chat``.

One module per scenario (``bench/chat.py``, …), each with ``run(options) -> dict`` and
``table(result) -> list of rows``; ``SCENARIOS`` maps names to modules, imported only when chosen.
``--size tiny`` uses the tiny random-weight models (any machine, seconds); ``--size real`` builds
random-weight models with the real architectures on a GPU (no download), so figures are real-size
speeds of our code, not of any checkpoint's outputs.
"""

from __future__ import annotations

#: Scenario name -> module with ``run(options)`` and ``table(result)``. Issue 5 adds more here.
SCENARIOS: dict[str, str] = {
    "chat": "bench.chat",
}
