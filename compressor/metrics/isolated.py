"""Runners timed in their own processes, so two runtimes never share a process's threads.

A runtime's thread pool affects whatever else runs in its process: PyTorch's OpenMP workers spin
for a while after a call and take cores from an ONNX Runtime session called next; a process-wide
setting that tames one (``OMP_WAIT_POLICY=PASSIVE``) slows the other (FINDINGS.md: PyTorch 1.75×
slower at batch 1). ``IsolatedRunner`` builds a runner in a child process (``spawn``: a fresh
interpreter with the runtime's own defaults) from a picklable factory, and times calls there; the
parent sends the inputs and gets the per-call times back, so only the model's own calls are
timed, never the pipe. Rounds still alternate between runners (metrics.evaluation.latency_race);
while one child is timed the others wait on their pipes, idle. ``request(method, *args)`` calls
any other method of the child's runner and returns its (picklable) answer: a decoder's timed
generation and the child's peak RSS (metrics/decoder_latency.py).
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any, Callable

import numpy as np

START_TIMEOUT_S = 600  # loading a model in a fresh interpreter on a busy 2-core machine
CALL_TIMEOUT_S = 600


class IsolationError(RuntimeError):
    """A timing process failed to start or died."""


def _serve(conn, factory: Callable[..., Any], args: tuple) -> None:
    try:
        runner = factory(*args)
        conn.send(("ready", list(runner.input_names), runner.name))
    except BaseException as err:  # reported to the parent, which raises it as one line
        conn.send(("error", f"{type(err).__name__}: {err}", ""))
        return
    while True:
        message = conn.recv()
        if message is None:
            return
        if message[0] == _CALL:
            _answer_call(conn, runner, *message[1:])
            continue
        feed, warmup, iterations = message
        try:
            for _ in range(warmup):
                runner.logits(feed)
            times = []
            for _ in range(iterations):
                started = time.perf_counter()
                runner.logits(feed)
                times.append((time.perf_counter() - started) * 1000.0)
            conn.send(("times", times, ""))
        except BaseException as err:
            conn.send(("error", f"{type(err).__name__}: {err}", ""))


_CALL = "call"  # a request message: (_CALL, method name, args); a timing message starts with a feed dict


def _answer_call(conn, runner, method: str, args: tuple) -> None:
    try:
        conn.send(("result", getattr(runner, method)(*args), ""))
    except BaseException as err:
        conn.send(("error", f"{type(err).__name__}: {err}", ""))


class IsolatedRunner:
    """``factory(*args)`` (module-level, picklable) run in its own process; ``call_times`` there."""

    def __init__(self, factory: Callable[..., Any], *args, name: str = ""):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, factory, args), daemon=True)
        self._process.start()
        child.close()
        kind, payload, runner_name = self._receive(START_TIMEOUT_S, "start")
        if kind == "error":
            self.close()
            raise IsolationError(f"the timing process for {name or factory.__name__} failed to start: {payload}")
        self.input_names, self.name = payload, name or runner_name

    def _receive(self, timeout: float, what: str):
        if not self._conn.poll(timeout):
            self.close()
            raise IsolationError(f"the timing process did not {what} within {timeout:.0f} s")
        try:
            return self._conn.recv()
        except EOFError:
            raise IsolationError(f"the timing process died (exit code {self._process.exitcode})") from None

    def call_times(self, feed: dict[str, np.ndarray], warmup: int, iterations: int) -> list[float]:
        """Milliseconds of each of ``iterations`` calls on ``feed``, after ``warmup`` untimed calls."""
        self._conn.send(({k: v for k, v in feed.items() if k in self.input_names}, warmup, iterations))
        kind, payload, _ = self._receive(CALL_TIMEOUT_S, "answer")
        if kind == "error":
            raise IsolationError(f"the timing process of {self.name} failed: {payload}")
        return payload

    def request(self, method: str, *args):
        """``runner.method(*args)`` in the child process, its answer sent back."""
        self._conn.send((_CALL, method, args))
        kind, payload, _ = self._receive(CALL_TIMEOUT_S, "answer")
        if kind == "error":
            raise IsolationError(f"the timing process of {self.name} failed in {method}: {payload}")
        return payload

    def logits(self, inputs):  # the Runner protocol's name; isolated runners are for timing only
        raise TypeError("an IsolatedRunner only times calls; evaluate with an in-process runner")

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
