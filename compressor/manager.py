"""Runs passes in order: checks model kinds, times each pass, hands results to instruments."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from mcompress.errors import McompressError, PassFailure
from mcompress.pass_base import Pass, PassContext, PassResult
from mcompress.state import ModelState

logger = logging.getLogger(__name__)


@dataclass
class PassRecord:
    name: str
    wall_s: float
    modified: bool
    size_bytes: int
    metrics: dict
    evaluation: dict = field(default_factory=dict)  # filled by instruments (e.g. accuracy)


# An instrument sees every finished pass; evaluation and dumps live here, not inside passes.
Instrument = Callable[[Pass, PassResult, PassRecord], None]


class PassManager:
    def __init__(self, passes: list[Pass], instruments: list[Instrument] | None = None):
        self.passes = passes
        self.instruments = instruments or []

    def run(self, state: ModelState, ctx: PassContext) -> tuple[ModelState, list[PassRecord]]:
        records: list[PassRecord] = []
        for p in self.passes:
            done = [r.name for r in records]
            if state.kind not in p.accepts:
                raise PassFailure(p.name, f"accepts {[k.value for k in p.accepts]} but got a {state.kind.value} model", done)
            logger.info("pass %s: start", p.name)
            started = time.perf_counter()
            try:
                result = p.call(state, ctx)
            except McompressError:
                raise
            except Exception as err:
                raise PassFailure(p.name, f"{type(err).__name__}: {err}", done) from err
            if result.state.kind is not p.produces:
                raise PassFailure(p.name, f"declared {p.produces.value} output but produced {result.state.kind.value}", done)
            record = PassRecord(p.name, time.perf_counter() - started, result.modified,
                                result.state.size_bytes(), result.metrics)
            for instrument in self.instruments:
                instrument(p, result, record)
            logger.info("pass %s: %.1f s, %d bytes", p.name, record.wall_s, record.size_bytes)
            records.append(record)
            state = result.state
        return state, records
