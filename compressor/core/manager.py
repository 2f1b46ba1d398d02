"""Runs passes in order: checks model kinds, times each pass, hands results to instruments."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from mcompress.core.errors import McompressError, PassFailure
from mcompress.core.pass_base import Pass, PassContext, PassResult
from mcompress.core.state import ModelState

if TYPE_CHECKING:  # the pass cache is the pipeline's; the manager only calls it
    from mcompress.pipeline.cache import PassCache

logger = logging.getLogger(__name__)


@dataclass
class PassRecord:
    name: str
    wall_s: float
    modified: bool
    size_bytes: int
    metrics: dict
    evaluation: dict = field(default_factory=dict)  # filled by instruments (e.g. accuracy)
    cached: bool = False  # the output was reused from the pass cache; wall_s is then its load time
    cache_key: str | None = None


class Instrument:
    """Watches passes from outside them (TVM's pass instruments): evaluation, gates after passes,
    FLOPs, dumps. Each hook sees one pass; an instrument must not depend on the order of the
    instruments list (what two instruments share, e.g. an evaluation, they share through an
    object both hold)."""

    def run_before_pass(self, p: Pass, state: ModelState, ctx: PassContext) -> None:
        pass

    def run_after_pass(self, p: Pass, result: PassResult, record: PassRecord) -> None:
        pass


class _AfterPass(Instrument):
    """A plain callable ``(pass, result, record)`` used as an after-pass instrument."""

    def __init__(self, fn: Callable[[Pass, PassResult, PassRecord], None]):
        self.fn = fn

    def run_after_pass(self, p: Pass, result: PassResult, record: PassRecord) -> None:
        self.fn(p, result, record)


class PassManager:
    def __init__(self, passes: list[Pass], instruments: "list[Instrument | Callable] | None" = None,
                 cache: "PassCache | None" = None):
        self.passes = passes
        self.instruments = [i if isinstance(i, Instrument) else _AfterPass(i) for i in instruments or []]
        self.cache = cache  # reuse outputs of passes whose inputs are unchanged (pipeline/cache.py)

    def run(self, state: ModelState, ctx: PassContext) -> tuple[ModelState, list[PassRecord]]:
        records: list[PassRecord] = []
        key = self.cache.root_key(state.source) if self.cache else None
        for p in self.passes:
            done = [r.name for r in records]
            if state.kind not in p.accepts:
                raise PassFailure(p.name, f"accepts {[k.value for k in p.accepts]} but got a {state.kind.value} model", done)
            for instrument in self.instruments:
                instrument.run_before_pass(p, state, ctx)
            started = time.perf_counter()
            result = None
            if self.cache:
                key = self.cache.key(key, p, ctx)
                result = self.cache.load(key, state)
            cached = result is not None and result.state.kind is p.produces
            if cached:
                logger.info("pass %s: reused cached output %s", p.name, key[:12])
            else:
                logger.info("pass %s: start", p.name)
                try:
                    result = p.call(state, ctx)
                except McompressError:
                    raise
                except Exception as err:
                    raise PassFailure(p.name, f"{type(err).__name__}: {err}", done) from err
            if result.state.kind is not p.produces:
                raise PassFailure(p.name, f"declared {p.produces.value} output but produced {result.state.kind.value}", done)
            wall_s = time.perf_counter() - started
            if self.cache and not cached:
                self.cache.store(key, p.name, result)
            record = PassRecord(p.name, wall_s, result.modified, result.state.size_bytes(), result.metrics,
                                cached=cached, cache_key=key)
            for instrument in self.instruments:
                instrument.run_after_pass(p, result, record)
            logger.info("pass %s: %.1f s, %d bytes", p.name, record.wall_s, record.size_bytes)
            records.append(record)
            state = result.state
        return state, records
