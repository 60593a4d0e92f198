"""The batcher of ``gpt-scratch serve``: one worker thread, a bounded queue, batches decoded together.

One worker thread owns the engine.  Requests wait in a bounded queue (``--max-queue``; full: 429 at once); the worker
takes up to ``--max-batch-size`` of them -- all that arrived within ``--batch-wait-ms`` of the oldest -- and decodes
them together (``Engine.run``; rows leave the batch as they finish); requests arriving meanwhile form the next batch.
Text pieces travel from the worker to the event loop through one buffer the loop drains
(``loop.call_soon_threadsafe``), so each stream goes out as it is decoded.  The HTTP side (:mod:`pipelines.serving.app`)
withdraws a request still queued after ``--request-timeout`` seconds (503) or whose client hung up; a client that
hangs up mid-stream has its text dropped (its row ends with its batch).
"""

from __future__ import annotations

import asyncio
import collections
import sys
import threading
import time
import traceback

from .requests import APIError

# markers the worker posts to a job besides its text pieces
JOB_STARTED = object()  # the worker took the job: sets ``job.started``
JOB_FINISHED = object()  # the last item of a job: its request is filled in


class Job:
    """One request on its way through the batcher; ``items`` receives text pieces, then JOB_FINISHED or an APIError."""

    def __init__(self, request, stream: bool):
        self.request, self.stream = request, stream
        self.items: asyncio.Queue = asyncio.Queue()
        self.started = asyncio.Event()
        self.enqueued = time.monotonic()
        self.state = "queued"  # -> "running", or "withdrawn" (timed out / client gone before it ran)
        self.cancelled = False  # the client went away: drop its text


class Batcher:
    """Jobs queued by the event loop, decoded in batches by one worker thread that owns ``engine``."""

    def __init__(self, engine, max_batch_size: int = 8, max_queue: int = 64, batch_wait: float = 0.015):
        self.engine = engine
        self.max_batch_size, self.max_queue, self.batch_wait = max_batch_size, max_queue, batch_wait
        self.pending: collections.deque[Job] = collections.deque()
        self.cond = threading.Condition()
        self.closing = False
        self.running = 0
        self.batch_sizes: collections.Counter = collections.Counter()
        self.outbox: list = []  # (job, item) pairs on their way to the event loop
        self.flush_scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    # -- the event loop's side ------------------------------------------------------------------------------------
    def start(self, loop) -> None:
        self.loop, self.closing = loop, False
        self.thread = threading.Thread(target=self._work, name="gpt-scratch-batcher", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self.cond:
            self.closing = True
            left, self.pending = list(self.pending), collections.deque()
            self.cond.notify_all()
        for job in left:
            self._post(job, APIError(503, "the server is shutting down", kind="server_error"))
        if self.thread is not None:
            self.thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.closing:
                raise APIError(503, "the server is shutting down", kind="server_error")
            if len(self.pending) >= self.max_queue:
                raise APIError(429, f"the server is busy: {len(self.pending)} requests are already waiting "
                               "(--max-queue); retry shortly", kind="rate_limit_error", code="queue_full",
                               headers={"Retry-After": "1"})
            self.pending.append(job)
            self.cond.notify()

    def withdraw(self, job: Job) -> bool:
        """Take a job out of the queue if it has not started; False if it already runs."""
        with self.cond:
            if job.state != "queued":
                return False
            self.pending.remove(job)
            job.state = "withdrawn"
            return True

    def stats(self) -> dict:
        with self.cond:
            sizes = dict(sorted(self.batch_sizes.items()))
            return {"queued": len(self.pending), "running": self.running, "batches": sum(sizes.values()),
                    "largest_batch": max(sizes, default=0), "batch_sizes": {str(k): v for k, v in sizes.items()},
                    "max_batch_size": self.max_batch_size, "max_queue": self.max_queue}

    def _flush(self) -> None:
        with self.cond:
            items, self.outbox, self.flush_scheduled = self.outbox, [], False
        for job, item in items:
            if item is JOB_STARTED:
                job.started.set()
            else:
                job.items.put_nowait(item)

    # -- the worker's side ----------------------------------------------------------------------------------------
    def _post(self, job: Job, item) -> None:
        """Hand ``item`` to ``job`` on the event loop; one wake-up carries everything posted until the loop runs."""
        with self.cond:
            self.outbox.append((job, item))
            wake, self.flush_scheduled = not self.flush_scheduled, True
        if wake:
            try:
                self.loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _next_batch(self) -> list[Job] | None:
        """Wait for work; then for the batch to fill or ``batch_wait`` past its oldest request.  None: closing."""
        with self.cond:
            while True:
                while not self.pending and not self.closing:
                    self.cond.wait()
                if self.closing:
                    return None
                deadline = self.pending[0].enqueued + self.batch_wait
                while self.pending and len(self.pending) < self.max_batch_size and not self.closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self.cond.wait(remaining)
                if self.pending and not self.closing:
                    jobs = [self.pending.popleft() for _ in range(min(len(self.pending), self.max_batch_size))]
                    for job in jobs:
                        job.state = "running"
                    self.running = len(jobs)
                    self.batch_sizes[len(jobs)] += 1
                    return jobs

    def _work(self) -> None:
        while (jobs := self._next_batch()) is not None:
            job_of_request = {id(job.request): job for job in jobs}
            for job in jobs:
                self._post(job, JOB_STARTED)

            def on_text(request, piece):
                job = job_of_request[id(request)]
                if job.stream and not job.cancelled:
                    self._post(job, piece)

            try:
                self.engine.run([job.request for job in jobs], on_text=on_text)
                outcome = JOB_FINISHED
            except Exception as err:  # a bug, not the client's fault: these requests fail, the server goes on
                traceback.print_exc(file=sys.stderr)
                outcome = APIError(500, f"generation failed: {type(err).__name__}: {err}", kind="server_error")
            with self.cond:
                self.running = 0
            for job in jobs:
                self._post(job, outcome)
