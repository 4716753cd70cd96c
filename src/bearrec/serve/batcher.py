"""The dynamic batcher: requests from the event loop, decoded together on one worker thread.

`await batcher.submit(histories)` queues one request (one or more users) and returns its results.
The worker thread takes the oldest requests as soon as they hold `max_batch_size` users or the
oldest has waited `max_delay_s`, decodes all their users with one call of `decode` (e.g.
`Recommender.recommend`) and hands each request its slice through its event loop. The event loop
never blocks on the model: it only appends to a deque under a lock. Requests are never split: one
with more users than `max_batch_size` (a batch request) is a batch of its own, which `decode` may
cut further (`Recommender.recommend` decodes `decode.batch_size` users at a time).

Bounded memory: at most `max_queue` users wait; `submit` raises `QueueFull` beyond that (the server
answers 503 with Retry-After). A request whose caller went away (its task cancelled) before its
batch started is dropped; once started, its batch is decoded and the others get their answers.
If a batch of several requests fails, each request is decoded alone, so one bad request cannot
fail the others. `close()` stops admission, decodes what is queued, then ends the thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


class QueueFull(Exception):
    """The queue holds `max_queue` users already."""


class BatcherClosed(Exception):
    """The batcher is shutting down and admits nothing new."""


@dataclass(eq=False)
class _Job:
    histories: list
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    @property
    def users(self) -> int:
        return len(self.histories)


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():  # its caller was cancelled: nothing to deliver
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class Batcher:
    """Gathers requests into batches of up to `max_batch_size` users (or `max_delay_s`) for `decode`,
    a function of a list of histories returning one result per history, run on one worker thread.

    `on_batch(users, seconds)` is called (on the worker thread) after each decoded batch."""

    def __init__(self, decode: Callable[[list], Sequence], max_batch_size: int, max_delay_s: float, max_queue: int,
                 on_batch: Callable[[int, float], None] | None = None):
        self.decode, self.max_batch_size, self.max_delay_s = decode, max_batch_size, max_delay_s
        self.max_queue, self.on_batch = max_queue, on_batch
        self._queue: deque[_Job] = deque()
        self._depth = 0  # users waiting in `_queue`
        self._in_flight = 0  # users of the batch being decoded
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="bearrec-batcher", daemon=True)

    # ---- the event loop's side ----------------------------------------------------------------
    def start(self) -> "Batcher":
        self._thread.start()
        return self

    @property
    def depth(self) -> int:
        """Users waiting for a batch (not counting the batch being decoded)."""
        return self._depth

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def submit(self, histories: list) -> list:
        """Results for `histories`, in order, decoded in some batch. Raises QueueFull / BatcherClosed
        at once when it cannot be admitted, or the decoder's exception."""
        if not histories:
            return []
        loop = asyncio.get_running_loop()
        job = _Job(list(histories), loop.create_future(), loop)
        with self._cond:
            if self._closing:
                raise BatcherClosed("the server is shutting down")
            if self._depth + job.users > self.max_queue:
                raise QueueFull(f"{self._depth} users are waiting (max_queue {self.max_queue})")
            self._queue.append(job)
            self._depth += job.users
            self._cond.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True  # dropped if its batch has not started; the batch is unaffected otherwise
            raise

    def close(self, timeout: float | None = None) -> None:
        """Admit nothing new, decode what is queued, end the worker thread (blocking)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the worker thread --------------------------------------------------------------------
    def _drop_cancelled(self) -> None:
        if any(job.cancelled for job in self._queue):
            kept = [job for job in self._queue if not job.cancelled]
            self._queue = deque(kept)
            self._depth = sum(job.users for job in kept)

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while True:
                self._drop_cancelled()
                if not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                remaining = self._queue[0].enqueued + self.max_delay_s - time.monotonic()
                if self._depth >= self.max_batch_size or remaining <= 0 or self._closing:
                    break
                self._cond.wait(remaining)
            batch, users = [], 0
            while self._queue and (not batch or users + self._queue[0].users <= self.max_batch_size):
                job = self._queue.popleft()
                batch.append(job)
                users += job.users
            self._depth -= users
            self._in_flight = users
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._decode_batch(batch)
            finally:
                self._in_flight = 0

    def _decode_batch(self, batch: list[_Job]) -> None:
        histories = [h for job in batch for h in job.histories]
        start = time.perf_counter()
        try:
            results = list(self.decode(histories))
            if len(results) != len(histories):
                raise RuntimeError(f"the decoder returned {len(results)} results for {len(histories)} histories")
        except Exception as exc:
            if len(batch) > 1:  # find the request that fails; the others still get their answers
                for job in batch:
                    self._decode_batch([job])
                return
            self._deliver(batch[0], None, exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(histories), time.perf_counter() - start)
        offset = 0
        for job in batch:
            self._deliver(job, results[offset:offset + job.users], None)
            offset += job.users

    @staticmethod
    def _deliver(job: _Job, result: Any, exc: BaseException | None) -> None:
        try:
            job.loop.call_soon_threadsafe(_settle, job.future, result, exc)
        except RuntimeError:  # its event loop is closed: nobody is waiting
            pass
