"""A test-only hook to stop an index run at a named point, so crash tests can SIGKILL it there.

Inert unless ``LENSDB_TEST_PAUSE_AT`` names the point. Then, on reaching it, the indexer writes the file
``LENSDB_TEST_PAUSE_MARKER`` (if set) and sleeps ``LENSDB_TEST_PAUSE_S`` seconds (default an hour) before it
goes on; each point pauses once per process. Points: ``projection`` (first chunk projected, nothing
appended), ``write`` (first rows appended inside the transaction), ``commit`` (every row written, just
before COMMIT).
"""

import os
import time
from pathlib import Path

POINTS = ("projection", "write", "commit")
_reached: set[str] = set()


def pause_point(name: str) -> None:
    if os.environ.get("LENSDB_TEST_PAUSE_AT") != name or name in _reached:
        return
    _reached.add(name)
    marker = os.environ.get("LENSDB_TEST_PAUSE_MARKER")
    if marker:
        Path(marker).write_text(f"{name} {os.getpid()}\n")
    time.sleep(float(os.environ.get("LENSDB_TEST_PAUSE_S", "3600")))
