"""Dynamic micro-batching of predict requests.

Protocol: each request's texts become one job on an asyncio queue. One batcher task takes the
first job and every job queued behind it, up to ``max_batch_size`` texts (the first job is taken
whole even when it holds more), and dispatches them at once: a batch is never held back waiting
for company while the model is idle, so a lone request costs what a direct runtime call costs.
Batches form while the model is busy: the jobs that arrive during one model call make up the next
batch. The batch's texts, concatenated in job order, go to ``Bundle.run`` in the single inference
thread (off the event loop) with ``batch_size=max_batch_size``: the runtime splits them into the
gate's length buckets (calibration.datasets.length_batches) itself, so the batching code exists
once. Each job then gets its own slice of the results, in its texts' order.

``max_wait_ms`` is not used here (there is no timer to wait on); it is the batch wait of the Ray
Serve deployment (serve/ray_serve.py), whose batching (``serve.batch``) waits for it.

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
class Job:
    texts: list[str]
    future: asyncio.Future | None = None  # None on Ray Serve, whose batch queue holds the caller's
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(self, bundle, max_batch_size: int, max_wait_ms: float, max_queue: int, on_batch=None):
        """``on_batch(jobs, prediction, seconds)`` is called on the event loop after each model call."""
        self.bundle = bundle
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcompress-inference")
        self._task: asyncio.Task | None = None

    @classmethod
    def for_config(cls, bundle, config, on_batch=None) -> "MicroBatcher":
        """The batcher of a server's settings (serve/config.py ServeConfig)."""
        return cls(bundle, config.max_batch_size, config.max_wait_ms, config.max_queue, on_batch)

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
        job = Job(list(texts), asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        return await job.future

    async def _collect(self) -> list[Job]:
        """The next batch: the first job (waited for), then the jobs already queued while fewer than
        max_batch_size texts are in it (the last may overshoot; Bundle.run splits at
        max_batch_size); called only when the model is idle."""
        jobs = [await self._queue.get()]
        count = len(jobs[0].texts)
        while count < self.max_batch_size and not self._queue.empty():
            job = self._queue.get_nowait()
            jobs.append(job)
            count += len(job.texts)
        return jobs

    async def _predict(self, jobs: list[Job]) -> list[tuple]:
        """One model call for ``jobs``' texts, concatenated in job order; each job's answer (its slice
        of the results, token lengths and truncation flags, and the seconds it waited)."""
        texts = [text for job in jobs for text in job.texts]
        started = time.perf_counter()
        prediction = await self.call(self.bundle.run, texts, self.max_batch_size)
        if self.on_batch is not None:
            self.on_batch(jobs, prediction, time.perf_counter() - started)
        answers, start = [], 0
        for job in jobs:
            end = start + len(job.texts)
            answers.append((prediction.results[start:end], prediction.token_lengths[start:end],
                            prediction.truncated[start:end], started - job.enqueued))
            start = end
        return answers

    async def _loop(self) -> None:
        while True:
            jobs = await self._collect()
            try:
                answers = await self._predict(jobs)
            except Exception as err:  # a model failure answers every request of the batch with it
                answers = [err] * len(jobs)
            for job, answer in zip(jobs, answers):
                if job.future.done():  # a client that went away leaves a cancelled future
                    continue
                if isinstance(answer, Exception):
                    job.future.set_exception(answer)
                else:
                    job.future.set_result(answer)
