"""Keep the process's memory close to its live tensors when the CPU is the device under a budget.

On the CPU, ``--vram-budget`` caps RAM, and what a cap can hold to is the process's resident
memory. glibc's malloc hands an allocation its own mapping (given back to the system when freed)
only above a threshold that rises, each time such a mapping is freed, up to 32 MiB. After the
first stage, every activation below that size comes from the heap, and freed heap memory mostly
stays resident. Measured on the real-size SVD VAE decode (``bench.models``, float32, 2 threads):

- glibc's default: 427 MiB peak for a 256x256 frame on the first call and 287 on the next, with
  160-170 MiB still resident after each, against 256 MiB of live tensors (8 full-resolution
  128-channel tensors); the whole SVD request at ``--vram-budget 1`` peaked at 1,137-1,194 MB;
- the threshold fixed at 4 MiB (``mallopt(M_MMAP_THRESHOLD)``, which also stops it rising):
  275 then 255 MiB, under 20 MiB left after, and the same request peaked at 987 MB, under it.

The cost is a fresh mapping (page faults) for each large tensor: the real-size SVD UNet step ran
10-16 % slower at 256x256 and 512x320. So it is set only when a budget binds on the CPU device,
where the budget is the user's request, and never on CUDA, whose caching allocator has its own
accounting. No library does this: PyTorch's CPU allocator is plain malloc, and jemalloc or
tcmalloc would have to be preloaded before Python starts, which a one-click launch cannot count on.
"""

from __future__ import annotations

import ctypes
import logging
import platform

logger = logging.getLogger(__name__)

#: glibc's ``M_MMAP_THRESHOLD`` parameter for ``mallopt`` (malloc.h).
M_MMAP_THRESHOLD = -3
#: Allocations of at least this many bytes get their own mapping, returned to the system when freed.
MMAP_THRESHOLD_BYTES = 4 * 2**20


def bound_heap(threshold: int = MMAP_THRESHOLD_BYTES) -> int | None:
    """Fix glibc's mmap threshold at ``threshold`` bytes; returns it, or None where not glibc.

    Process-wide and idempotent: every Studio on the CPU with a budget asks for the same value.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        logger.info("cpu heap: not glibc (%s); RSS may exceed the live tensors", platform.system())
        return None
    try:
        libc = ctypes.CDLL(None)
        done = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(threshold))
    except (OSError, AttributeError) as error:
        logger.warning("cpu heap: mallopt unavailable (%s)", error)
        return None
    if done != 1:
        logger.warning("cpu heap: mallopt(M_MMAP_THRESHOLD, %d) refused", threshold)
        return None
    logger.info("cpu heap: allocations of %d MiB or more are returned to the system when freed",
                threshold // 2**20)
    return threshold
