"""One torch intra-op thread for test packages whose tiny models run ops of microseconds."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run on one intra-op thread, and give the setting back afterwards.

    A second thread buys nothing on ops this small, and on a shared 2-core machine OpenMP's
    spin-waiting threads made the SD3.5 and SDXL packages 15-25x slower (266 s and 280 s against
    10-18 s, measured while two other test sessions ran).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
