"""A run's resident memory kept at what it holds: glibc's allocator told to stop raising its mmap threshold.

glibc serves an allocation above ``M_MMAP_THRESHOLD`` with its own mapping, returned to the system when freed —
but after each such free it raises the threshold to that size (up to 32 MiB). From then on each chunk's
multi-MiB temporaries (a chunk of vectors carried, its statistics, its top-k) come from the heap, between the
small arrays the writer keeps for the current run, and the heap cannot shrink past them: on a Llama-shaped
checkpoint the resident size grew by ~45 KiB per projected vector (370 MiB over 8192 vectors) while the live
bytes stayed flat. A fixed threshold (which also switches the dynamic adjustment off) keeps every temporary of
``THRESHOLD`` bytes or more in a mapping of its own, freed whole. Linux with glibc only; elsewhere nothing is
changed. The setting is process-wide and stays set: it costs a few page faults per large temporary.
"""

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD = 256 << 10

_done = False


def bound_heap_growth() -> bool:
    """Fix glibc's mmap threshold at ``THRESHOLD`` for this process (once); False where it could not be set."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    return _done
