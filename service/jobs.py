"""The service's one write queue, and the index jobs that go through it.

DuckDB allows one writing process per file, so the process that serves the file also writes it, and inside
that process every write takes its turn: ``WriteQueue`` lets one write transaction run at a time, in the order
they asked (index runs, traces, alignments, registrations, watch decisions, forgetting), each on a cursor of
the service's one connection (``schema.writer.Store``). Requests that read never queue: they read the last
committed snapshot. Ids come from the store's counters inside each transaction, so writes that queue never
collide, and a request that waits is answered when its turn has come and gone, never with a 5xx.

Index jobs are long, so they are queued here as jobs (``JobRunner``: one worker thread, followed at
``GET /jobs/{id}``, cancelled with ``DELETE /jobs/{id}``); their transactions wait in the same queue.
"""

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from indexer import IndexOptions, IndexResult, index_checkpoint
from schema.errors import Cancelled, LensdbError
from schema.writer import Store

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
log = logging.getLogger("lensdb.jobs")

# Index options that say where and how the server computes: its operator's settings, never a client's.
SERVER_ONLY = {"device": "index_device", "precision": "index_precision", "executor": "index_executor",
               "address": "ray_address", "ray_workers": "ray_workers", "chunk_mb": None}


class WriteQueue:
    """Write transactions one at a time, first come first served (a ticket lock): ``with queue.turn(): …``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()
        self._holder: int | None = None

    @contextmanager
    def turn(self) -> Iterator[None]:
        ticket = object()
        with self._cond:
            if self._holder == threading.get_ident():
                raise AssertionError("a write transaction asked for another inside itself: it would wait forever")
            self._waiting.append(ticket)
            try:
                self._cond.wait_for(lambda: self._waiting[0] is ticket)
            except BaseException:
                self._waiting.remove(ticket)
                self._cond.notify_all()
                raise
            self._holder = threading.get_ident()
        try:
            yield
        finally:
            with self._cond:
                self._holder = None
                self._waiting.popleft()
                self._cond.notify_all()

    def waiting(self) -> int:
        """Writes queued behind the one running (0 when none runs)."""
        with self._cond:
            return max(0, len(self._waiting) - 1)


class _RequestBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_server_settings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            named = [k for k in data if k in SERVER_ONLY]
            if named:
                settings = [f"--{flag.replace('_', '-')}" for k in named if (flag := SERVER_ONLY[k])]
                raise ValueError(f"{', '.join(named)}: set by the server's operator, not by a request"
                                 + (f" (lensdb serve {' '.join(settings)})" if settings else ""))
        return data


# Body of POST /index: the checkpoint folder (a path on the server, inside an allowed folder) and what to
# index; declared from IndexOptions, less what only the operator sets.
IndexRequest = create_model(  # type: ignore[call-overload]
    "IndexRequest", __base__=_RequestBase, __doc__="Body of ``POST /index``: a checkpoint folder on the server "
    "(inside a folder the operator allowed) and what to index; device, precision and executor are the server's.",
    checkpoint=(str, Field(description="Hugging Face checkpoint folder, as an absolute path on the server")),
    **{name: (f.annotation, f) for name, f in IndexOptions.model_fields.items() if name not in SERVER_ONLY})


def public_error(err: BaseException, job_id: int) -> str:
    """What a client is told about a failed job: a lensdb error's own message (one line, bounded), or for
    anything else only its kind; the whole story goes to the server log."""
    if isinstance(err, LensdbError):
        text = " ".join(str(err).split())
        return text if len(text) <= 1000 else text[:999] + "…"
    return f"internal error ({type(err).__name__}) in index job {job_id}; the server log has the details."


class Job(BaseModel):
    id: int
    status: JobStatus
    checkpoint: str
    options: IndexOptions
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: IndexResult | None = None
    error: str | None = Field(None, description="why the job failed or was cancelled; the store is unchanged")
    cancel_requested: bool = Field(False, description="DELETE /jobs/{id} asked it to stop; it stops at its next "
                                   "unit and writes nothing")


class JobRunner:
    """Queues index jobs and runs them one at a time in a daemon thread, through the store's write queue."""

    def __init__(self, store: Store, after: Callable[[], None] | None = None) -> None:
        """``after``: called in the worker thread after each job that indexed something."""
        self.store = store
        self.after = after
        self._jobs: dict[int, Job] = {}
        self._cancel: dict[int, threading.Event] = {}
        self._ids = itertools.count(1)
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="lensdb-index", daemon=True)
        self._thread.start()

    def submit(self, checkpoint: str, options: IndexOptions) -> Job:
        with self._lock:
            job = Job(id=next(self._ids), status="queued", checkpoint=checkpoint, options=options,
                      submitted_at=datetime.now())
            self._jobs[job.id] = job
            self._cancel[job.id] = threading.Event()
        self._queue.put(job.id)
        return job

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.model_copy() if job else None

    def all(self) -> list[Job]:
        with self._lock:
            return [j.model_copy() for j in sorted(self._jobs.values(), key=lambda j: -j.id)]

    def wait(self, job_id: int, poll_s: float = 0.05, timeout_s: float | None = None) -> Job:
        """Block until the job has ended (done, failed or cancelled), or ``timeout_s`` passed; return it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if job is None:
                raise LensdbError(f"no index job {job_id}.")
            if job.status in ("done", "failed", "cancelled") or (deadline is not None and time.monotonic() > deadline):
                return job
            time.sleep(poll_s)

    def cancel(self, job_id: int, wait_s: float = 30.0) -> Job | None:
        """Stop a job: a queued one never starts, a running one stops at its next unit (its transaction rolls
        back); a finished one is left as it is. Waits up to ``wait_s`` for a running job to stop."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status == "queued":
                self._jobs[job_id] = job.model_copy(update={
                    "status": "cancelled", "cancel_requested": True, "finished_at": datetime.now(),
                    "error": "cancelled before it started; nothing was written"})
            elif job.status == "running":
                self._jobs[job_id] = job.model_copy(update={"cancel_requested": True})
                self._cancel[job_id].set()
        return self.wait(job_id, timeout_s=wait_s)

    def _update(self, job_id: int, **changes: object) -> None:
        with self._lock:
            self._jobs[job_id] = self._jobs[job_id].model_copy(update=changes)

    def _start(self, job_id: int) -> Job | None:
        """Mark a queued job running; None if it was cancelled while queued."""
        with self._lock:
            job = self._jobs[job_id]
            if job.status != "queued":
                return None
            job = self._jobs[job_id] = job.model_copy(update={"status": "running", "started_at": datetime.now()})
            return job

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            job = self._start(job_id)
            if job is None:
                continue
            try:
                result = index_checkpoint(self.store, Path(job.checkpoint), job.options, cancel=self._cancel[job_id])
            except Cancelled as err:
                self._update(job_id, status="cancelled", error=str(err), finished_at=datetime.now())
            except Exception as err:  # LensdbError, or a bug: the service must stay up and say so
                if not isinstance(err, LensdbError):
                    log.error("index job %s (%s) failed", job_id, job.checkpoint, exc_info=err)
                self._update(job_id, status="failed", error=public_error(err, job_id), finished_at=datetime.now())
            else:
                self._update(job_id, status="done", result=result, finished_at=datetime.now())
                if self.after is not None and result.status == "indexed":
                    self.after()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the running job finish (it is one transaction), then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout)
