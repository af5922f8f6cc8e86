"""Index jobs run by the service: one worker thread, one job at a time, on the service's own connection.

DuckDB allows one writing process per file, so the process that serves the file also indexes into it. Jobs
queue here and run one by one in a background thread; each writes in one transaction on a cursor of the
shared connection, while requests keep reading the last committed snapshot.
"""

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from indexer import IndexOptions, IndexResult, index_checkpoint
from schema.errors import LensdbError

JobStatus = Literal["queued", "running", "done", "failed"]
log = logging.getLogger("lensdb.jobs")

# Index options that say where and how the server computes: its operator's settings, never a client's.
SERVER_ONLY = {"device": "index_device", "precision": "index_precision", "executor": "index_executor",
               "address": "ray_address", "ray_workers": "ray_workers", "chunk_mb": None}


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
    error: str | None = Field(None, description="why the job failed; the store is unchanged")


class JobRunner:
    """Queues index jobs and runs them one at a time in a daemon thread."""

    def __init__(self, db_path: Path, con: duckdb.DuckDBPyConnection,
                 after: Callable[[], None] | None = None) -> None:
        """``after``: called in the worker thread after each job that indexed something."""
        self.db_path = db_path
        self.con = con
        self.after = after
        self._jobs: dict[int, Job] = {}
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
        self._queue.put(job.id)
        return job

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.model_copy() if job else None

    def all(self) -> list[Job]:
        with self._lock:
            return [j.model_copy() for j in sorted(self._jobs.values(), key=lambda j: -j.id)]

    def wait(self, job_id: int, poll_s: float = 0.05) -> Job:
        """Block until the job has finished (done or failed) and return it."""
        while True:
            job = self.get(job_id)
            if job is None:
                raise LensdbError(f"no index job {job_id}.")
            if job.status in ("done", "failed"):
                return job
            time.sleep(poll_s)

    def _update(self, job_id: int, **changes: object) -> None:
        with self._lock:
            self._jobs[job_id] = self._jobs[job_id].model_copy(update=changes)

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            job = self.get(job_id)
            assert job is not None
            self._update(job_id, status="running", started_at=datetime.now())
            try:
                result = index_checkpoint(self.db_path, Path(job.checkpoint), job.options, con=self.con)
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
