"""Index jobs run by the service: one worker thread, one job at a time, on the service's own connection.

DuckDB allows one writing process per file, so the process that serves the file also indexes into it. Jobs
queue here and run one by one in a background thread; each writes in one transaction on a cursor of the
shared connection, while requests keep reading the last committed snapshot.
"""

import itertools
import queue
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Literal

import duckdb
from pydantic import BaseModel, Field

from indexer import IndexOptions, IndexResult, index_checkpoint
from schema.errors import LensdbError

JobStatus = Literal["queued", "running", "done", "failed"]


class IndexRequest(IndexOptions):
    """Body of ``POST /index``: a checkpoint folder on the server's disk plus the indexing options."""

    checkpoint: str = Field(description="Hugging Face checkpoint folder, as a path on the server")


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

    def submit(self, request: IndexRequest) -> Job:
        options = IndexOptions(**request.model_dump(exclude={"checkpoint"}))
        with self._lock:
            job = Job(id=next(self._ids), status="queued", checkpoint=request.checkpoint, options=options,
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
            except LensdbError as err:
                self._update(job_id, status="failed", error=str(err), finished_at=datetime.now())
            except Exception as err:  # a bug, but the service must stay up and say so
                traceback.print_exc()
                self._update(job_id, status="failed", error=f"internal error: {err!r}",
                             finished_at=datetime.now())
            else:
                self._update(job_id, status="done", result=result, finished_at=datetime.now())
                if self.after is not None and result.status == "indexed":
                    self.after()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the running job finish (it is one transaction), then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout)
