"""A run's resident memory kept at what it holds: glibc's allocator told to stop raising its mmap threshold, and
DuckDB held to a small ``memory_limit`` and one thread while the run writes (``duckdb_spills``).

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
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from schema.writer import instance_settings

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


DUCKDB_LIMIT = 32 << 20
"""DuckDB's ``memory_limit`` while an index run writes (``duckdb_spills``). 32 MiB rather than 64 (with
``unit_writer.VALUE_BYTES`` at 4 MiB rather than 16) took 36 MiB off a Llama-shaped run's peak and ~55 MiB off a
default MiniLM index's, in the same time. Raising it for the commit, once the basis is freed, made a Llama-shaped
commit ~2 s faster but moved the run's peak there (+33–50 MiB): not done."""
DUCKDB_THREADS = 1
"""DuckDB's ``threads`` while an index run writes."""


@contextmanager
def duckdb_spills(con: duckdb.DuckDBPyConnection, limit: int = DUCKDB_LIMIT) -> Iterator[None]:
    """Hold the DuckDB instance of ``con`` to ``limit`` bytes and ``DUCKDB_THREADS`` threads for the body, then
    restore its ``memory_limit`` and ``threads``.

    A run's one transaction appends every stored vector (``vector_values``) and every basis row (a second
    ``[V, d]`` matrix) before it commits. Rows that fill no row group (122 880 rows; a Llama run's 30 k vectors of
    16 KiB do not) are not written to the file early: DuckDB keeps them in its buffer pool, whose default limit
    is 80% of the machine, so a run's resident size grew by the basis plus every stored vector, and again at
    commit. Under a limit DuckDB moves those blocks to its temporary folder (``<store>.tmp``) and reads them back
    at commit: the same rows, no slower within this machine's noise (960 MB appended under 100 MB: 27 s against
    30 s), the resident size bounded (a Llama-shaped run with stored vectors: peak 2942 MiB before, ~1750 MiB with
    this and the block reads). One thread: the appends run beside the projection's GEMM, whose threads already
    take every core (on 2 cores a default MiniLM index took 20.0 s with DuckDB's 2 threads, 18.0 s with one),
    and a one-thread insert buffers fewer row groups — with DuckDB's 2 threads 64 MiB was too little (a default
    MiniLM index failed with "Out of Memory" in its token run's insert), with one it runs at 32 MiB. An instance
    whose configuration is locked (the service's, hardened with the operator's ``memory_limit`` and spill folder)
    is left as it is: there the operator's limit bounds the run, and reads never see a limit they did not
    configure."""
    cur = con.cursor()
    try:
        with instance_settings(cur, memory_limit=f"{max(1, limit >> 20)}MiB", threads=DUCKDB_THREADS):
            yield
    finally:
        cur.close()


def checkpoint_quietly(con: duckdb.DuckDBPyConnection) -> None:
    """``CHECKPOINT`` on a cursor of ``con`` without DuckDB's progress bar (it would print on the terminal)."""
    cur = con.cursor()
    try:
        cur.execute("SET enable_progress_bar = false")
        cur.execute("CHECKPOINT")
    finally:
        cur.close()
