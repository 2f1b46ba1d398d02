"""Dynamic micro-batching of predict requests.

Protocol: each request's texts become one job on an asyncio queue. One batcher task takes the
first job, then keeps adding queued jobs until the batch holds ``max_batch_size`` texts, or
``max_wait_ms`` has passed since it took the first, or no other predict request is arriving (a
request whose body is being received or validated counts as arriving; so a lone request is never
held back waiting for company that is not coming). The batch's texts, concatenated in job order, go
to ``Bundle.run`` in the single inference thread (off the event loop) with
``batch_size=max_batch_size``: the runtime splits them into the gate's length buckets
(calibration.datasets.length_batches) itself, so the batching code exists once. Each job then gets
its own slice of the results, in its texts' order. While the thread runs a batch, new jobs queue up
and form the next one.

Backpressure: at most ``max_queue`` jobs wait; ``submit`` raises QueueFull beyond that (the app
answers 503 with Retry-After), so memory stays bounded by max_queue x max_texts x max_chars.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


class QueueFull(Exception):
    """More than max_queue predict requests are waiting."""


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(self, bundle, max_batch_size: int, max_wait_ms: float, max_queue: int, on_batch=None):
        self.bundle = bundle
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch  # (jobs, prediction, seconds) -> None, called on the event loop
        self.arriving = 0  # predict requests received but not yet submitted (the app counts them)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._added = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcompress-inference")
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def call(self, function, *args):
        """``function(*args)`` in the inference thread (the warm-up call goes this way too)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def submit(self, texts: list[str]):
        """(results, token lengths, truncated flags, seconds queued) of ``texts``, batched with others."""
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull
        job = _Job(list(texts), asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        self._added.set()
        return await job.future

    async def _collect(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        count = len(jobs[0].texts)
        deadline = time.perf_counter() + self.max_wait_s
        while count < self.max_batch_size:
            if self._queue.empty():
                remaining = deadline - time.perf_counter()
                if self.arriving <= 0 or remaining <= 0:
                    break
                self._added.clear()
                try:
                    await asyncio.wait_for(self._added.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                continue
            job = self._queue.get_nowait()
            jobs.append(job)
            count += len(job.texts)
        return jobs

    async def _loop(self) -> None:
        while True:
            jobs = await self._collect()
            texts = [text for job in jobs for text in job.texts]
            started = time.perf_counter()
            try:
                prediction = await self.call(self.bundle.run, texts, self.max_batch_size)
            except Exception as err:  # a model failure answers every request of the batch with it
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            seconds = time.perf_counter() - started
            if self.on_batch is not None:
                self.on_batch(jobs, prediction, seconds)
            start = 0
            for job in jobs:
                end = start + len(job.texts)
                if not job.future.done():  # a client that went away leaves a cancelled future
                    job.future.set_result((prediction.results[start:end], prediction.token_lengths[start:end],
                                           prediction.truncated[start:end], started - job.enqueued))
                start = end
