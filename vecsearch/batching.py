"""The micro-batcher in front of the model: concurrent requests share one model call.

A served model answers many small requests (one upload each). Called one at a time they
pay the batch-1 price per image; `MicroBatcher` gathers the rows submitted from many
threads (or async handlers) until `max_batch` rows or `max_delay` seconds after the first
waiting one, runs ONE `run(pixels) -> vectors` on the concatenation in its own worker
thread, and hands each caller its rows (the shape of Triton's dynamic batcher and Ray
Serve's `@serve.batch`). A lone request on a quiet service is not delayed at all: when the
previous batch held one request, the next runs as soon as it arrives.

Backpressure: at most `max_queue` requests wait; one more is refused at once with
ServiceBusyError (and a retry-after estimate), never queued without bound. A request whose
`deadline` (time.monotonic()) passed, or whose `cancelled()` is true (its client went away),
is dropped before its model call with RequestDroppedError: abandoned work costs nothing.
Deadlines also size the batches: a call is not grown past what ends before the earliest
deadline in it (from the model's measured time per row), and a request that could not finish
before its own deadline is dropped at once rather than run for nobody (so, on a slow CPU, a
burst of requests that will give up does not hold the model past the point they leave).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import RequestDroppedError, ServiceBusyError

log = logging.getLogger(__name__)

DEFAULT_MAX_DELAY = 0.005
"""Seconds the first waiting request waits for others: a few ms, next to a model call of 10-150 ms."""

QUEUE_PER_BATCH = 4
"""The default queue bound, in full batches: deep enough for bursts, short enough to answer within seconds."""

QUIET_AFTER = 1.0
"""Seconds without a model call after which the service counts as quiet: the next request runs at once."""


@dataclass(eq=False)
class Submission:
    """One caller's rows, waiting for a model call."""

    pixels: np.ndarray
    deadline: float | None
    cancelled: Callable[[], bool] | None
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return len(self.pixels)

    def drop_reason(self, now: float, takes: float = 0.0) -> str | None:
        """Why this submission must not be run (None: run it), `takes` being what its model call is expected
        to take. A failing `cancelled` counts as not cancelled."""
        if self.future.cancelled():
            return "cancelled by its caller"
        if self.deadline is not None and now >= self.deadline:
            return "its deadline passed before the model could take it"
        if self.deadline is not None and now + takes > self.deadline:
            return "its deadline would pass before the model could finish it"
        if self.cancelled is not None:
            try:
                if self.cancelled():
                    return "its client went away"
            except Exception:  # a broken check must not stop the batch for everyone
                log.debug("cancelled() check failed", exc_info=True)
        return None


class MicroBatcher:
    """One worker thread running `run` over batches of submitted rows; see the module docstring."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int,
        max_delay: float = DEFAULT_MAX_DELAY,
        max_queue: int | None = None,
        name: str = "vecsearch-batcher",
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_delay < 0:
            raise ValueError("max_delay must not be negative")
        self.run = run
        self.max_batch = int(max_batch)
        self.max_delay = float(max_delay)
        self.max_queue = int(max_queue if max_queue is not None else QUEUE_PER_BATCH * self.max_batch)
        if self.max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.on_batch: list[Callable[[int], None]] = []  # called with each model call's rows (metrics)
        self._queue: deque[Submission] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._batches = self._rows = self._rejected = self._dropped = 0
        self._last_requests = 1  # requests in the previous batch: 1 means a quiet service
        self._last_end = 0.0
        self._batch_seconds = 0.0  # moving average of a model call's wall time, for Retry-After
        self._row_seconds = 0.0  # moving average of a model call's wall time per row: what a batch will take
        self._model_cpu = 0.0  # process CPU seconds spent inside model calls (the rest is the service's own)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # -- callers --------------------------------------------------------------------------
    def submit(self, pixels: np.ndarray, *, deadline: float | None = None, cancelled: Callable[[], bool] | None = None) -> Future:
        """Queue rows (n, h, w, 3) for a model call; a Future of their vectors. Full queue: ServiceBusyError now."""
        sub = Submission(np.asarray(pixels), deadline, cancelled)
        if len(self._queue) >= self.max_queue:
            self._purge()
        with self._cond:
            if self._stopping:
                raise ServiceBusyError("The model is shutting down: try another server, or again later.", retry_after=5.0)
            if len(self._queue) >= self.max_queue:
                self._rejected += 1
                raise ServiceBusyError(
                    f"The model's queue is full ({self.max_queue} requests waiting): retry shortly.",
                    retry_after=self.retry_after(),
                )
            self._queue.append(sub)
            self._queued_rows += sub.rows
            self._cond.notify()
        return sub.future

    def embed(
        self, pixels: np.ndarray, *, deadline: float | None = None, cancelled: Callable[[], bool] | None = None
    ) -> np.ndarray:
        """The vectors of `pixels`, waiting for the batch they ride in (from a thread)."""
        return self.submit(pixels, deadline=deadline, cancelled=cancelled).result()

    async def embed_async(
        self, pixels: np.ndarray, *, deadline: float | None = None, cancelled: Callable[[], bool] | None = None
    ) -> np.ndarray:
        """As `embed`, awaited; cancelling the awaiting task drops the submission if it has not run yet."""
        return await asyncio.wrap_future(self.submit(pixels, deadline=deadline, cancelled=cancelled))

    def _purge(self) -> None:
        """Drop the waiting submissions that are cancelled or past their deadline, so they don't fill the queue."""
        with self._cond:
            waiting = list(self._queue)
        now = time.monotonic()
        doomed = [(sub, reason) for sub in waiting if (reason := sub.drop_reason(now)) is not None]
        if not doomed:
            return
        with self._cond:
            gone = {id(sub) for sub, _ in doomed if sub in self._queue}
            self._queue = deque(sub for sub in self._queue if id(sub) not in gone)
            self._queued_rows = sum(sub.rows for sub in self._queue)
            self._dropped += len(gone)
        for sub, reason in doomed:
            if id(sub) in gone and sub.future.set_running_or_notify_cancel():
                sub.future.set_exception(RequestDroppedError(f"Request dropped before its model call: {reason}."))

    def retry_after(self) -> float:
        """Seconds until the queue has likely drained: the waiting batches times a model call's time (1 s at least)."""
        batches = self._queued_rows / self.max_batch + 1
        return max(1.0, round(batches * self._batch_seconds, 1))

    def stats(self) -> dict:
        """Counters for /stats and metrics: queue depth, model calls, rows, rejected and dropped requests, limits."""
        with self._cond:
            return {
                "queue_depth": len(self._queue),
                "batches": self._batches,
                "rows": self._rows,
                "rejected": self._rejected,
                "dropped": self._dropped,
                "max_batch": self.max_batch,
                "max_delay_ms": self.max_delay * 1000,
                "max_queue": self.max_queue,
                "model_cpu_s": round(self._model_cpu, 4),
                "row_ms": round(self._row_seconds * 1000, 2),
            }

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the batch in progress, refuse the waiting ones (ServiceBusyError), end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._refuse_waiting()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _refuse_waiting(self) -> None:
        with self._cond:
            left, self._queue = list(self._queue), deque()
            self._queued_rows = 0
        for sub in left:
            if sub.future.set_running_or_notify_cancel():
                sub.future.set_exception(ServiceBusyError("The model stopped before this request's turn.", retry_after=5.0))

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def in_worker(self) -> bool:
        """True in the batcher's own thread (where `run` may call the model directly)."""
        return threading.current_thread() is self._thread

    # -- the worker -----------------------------------------------------------------------
    def _take(self) -> list[Submission] | None:
        """The next batch: wait for rows, then up to max_batch rows (at least one submission); None once stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                if self._queue:
                    now = time.monotonic()
                    quiet = len(self._queue) == 1 and (self._last_requests == 1 or now - self._last_end > QUIET_AFTER)
                    due = self._queue[0].submitted + self.max_delay
                    if quiet or self._queued_rows >= self.max_batch or now >= due:
                        break
                    self._cond.wait(due - now)
                else:
                    self._cond.wait()
            batch: list[Submission] = []
            rows, first_deadline = 0, math.inf
            while self._queue and (not batch or rows + self._queue[0].rows <= self.max_batch):
                sub = self._queue[0]
                due = min(first_deadline, sub.deadline if sub.deadline is not None else math.inf)
                if batch and now + self._row_seconds * (rows + sub.rows) > due:
                    break  # a bigger call would end past a deadline in it: the rest ride in the next one
                self._queue.popleft()
                batch.append(sub)
                rows += sub.rows
                first_deadline = due
            self._queued_rows -= rows
            return batch

    def _work(self) -> None:
        try:
            while (batch := self._take()) is not None:
                self._run_batch(batch)
        finally:
            self._refuse_waiting()

    def _run_batch(self, batch: list[Submission]) -> None:
        now = time.monotonic()
        live: list[Submission] = []
        dropped = 0
        for sub in batch:
            reason = sub.drop_reason(now, self._row_seconds * sub.rows)
            if reason is None and sub.future.set_running_or_notify_cancel():
                live.append(sub)
                continue
            dropped += 1
            if reason is not None and sub.future.set_running_or_notify_cancel():
                sub.future.set_exception(RequestDroppedError(f"Request dropped before its model call: {reason}."))
        if dropped:
            with self._cond:
                self._dropped += dropped
        if not live:
            return
        rows = sum(s.rows for s in live)
        t0, cpu0 = time.monotonic(), time.process_time()
        try:
            pixels = live[0].pixels if len(live) == 1 else np.concatenate([s.pixels for s in live])
            vectors = self.run(pixels)
            if len(vectors) != rows:
                raise RuntimeError(f"the model returned {len(vectors)} rows for {rows}")
        except BaseException as e:  # every caller of this batch hears it; the worker goes on
            for sub in live:
                sub.future.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        finally:
            end = time.monotonic()
            with self._cond:
                self._batches += 1
                self._rows += rows
                self._last_requests = len(live)
                self._last_end = end
                took = end - t0
                self._model_cpu += time.process_time() - cpu0
                self._batch_seconds = took if self._batches == 1 else 0.8 * self._batch_seconds + 0.2 * took
                per_row = took / max(rows, 1)
                self._row_seconds = per_row if self._batches == 1 else 0.8 * self._row_seconds + 0.2 * per_row
        start = 0
        for sub in live:
            sub.future.set_result(vectors[start : start + sub.rows])
            start += sub.rows
        for hook in list(self.on_batch):
            try:
                hook(rows)
            except Exception:  # a metrics hook must not break serving
                log.warning("on_batch hook failed", exc_info=True)
