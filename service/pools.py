"""Bounded worker pools for the handlers that can run long (POST /sql, the HTML pages), with back-pressure.

Each pool has its own threads, so a flood of slow queries cannot take the threads every other endpoint runs on
(``/health`` keeps answering). A pool runs ``workers`` calls at once and lets as many more wait; beyond that a
request is refused at once with ``Busy`` (503 and ``Retry-After``) instead of queueing without end. A call
counts until its thread is done with it, even when its client has gone away.
"""

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from schema.errors import LensdbError

T = TypeVar("T")


class Busy(LensdbError):
    """Every worker of a pool is busy and its waiting room is full; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Pool:
    def __init__(self, name: str, workers: int, waiting: int | None = None, retry_after: int = 1) -> None:
        self.name = name
        self.capacity = workers + (workers if waiting is None else waiting)
        self.retry_after = retry_after
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"lensdb-{name}")
        self._lock = threading.Lock()
        self._taken = 0

    @property
    def taken(self) -> int:
        """Calls running or waiting now."""
        with self._lock:
            return self._taken

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on one of the pool's threads; ``Busy`` at once when the pool is full."""
        with self._lock:
            if self._taken >= self.capacity:
                raise Busy(f"the service is busy ({self.capacity} {self.name} requests running or waiting); "
                           f"try again in {self.retry_after}s.", self.retry_after)
            self._taken += 1
        try:
            future: Future[T] = self._threads.submit(fn)
        except RuntimeError:  # shut down
            self._release(None)
            raise Busy("the service is shutting down.", self.retry_after) from None
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: object) -> None:
        with self._lock:
            self._taken -= 1

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
