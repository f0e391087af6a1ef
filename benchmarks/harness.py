"""Interleaved rounds: every variant of one operation is timed in the same process, round after round.

A *variant* is a way of making the same call (bare, under this toolkit, under OpenTelemetry contrib...).
Each round activates one variant at a time (patch / instrument), warms it up, times ``calls`` calls,
and deactivates it; the order of variants rotates from round to round, so that drift on a shared
machine (other processes, CPU frequency) spreads over all of them. The figures are:

- per-call µs of a variant in a round: ``elapsed / calls``;
- overhead of a variant in a round: its per-call µs minus the bare variant's **in the same round**;
- min / median / max over the rounds;
- ``A/A``: a second, identical bare variant; its overhead is pure noise and shows how far to trust the rest;
- ratio: median overhead of ours / median overhead of contrib.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Result", "Stats", "Variant", "run"]


def _noop() -> None:
    return None


@dataclass
class Variant:
    """One way of making the call. ``make()`` returns the zero-argument call (sync, or async if ``is_async``).

    ``activate``/``deactivate`` switch the instrumentation on and off around each timed block; ``make`` is
    called once, lazily, during the first activation (contrib instruments some clients at construction).
    ``check`` (optional) returns the number of spans one call made, for the self-check.
    """

    name: str
    make: Callable[[], Callable[[], Any]]
    activate: Callable[[], None] = _noop
    deactivate: Callable[[], None] = _noop
    is_async: bool = False
    _call: Callable[[], Any] | None = field(default=None, repr=False)

    def call_fn(self) -> Callable[[], Any]:
        if self._call is None:
            self._call = self.make()
        return self._call


@dataclass
class Stats:
    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        return cls(min(values), statistics.median(values), max(values))

    def fmt(self, digits: int = 1) -> str:
        return f"{self.median:.{digits}f} ({self.min:.{digits}f}..{self.max:.{digits}f})"


@dataclass
class Result:
    """Per-round per-call µs of every variant, and overheads against the bare variant (paired by round)."""

    op: str
    per_call: dict[str, list[float]]
    bare: str = "bare"

    def stats(self, name: str) -> Stats:
        return Stats.of(self.per_call[name])

    def overhead(self, name: str) -> Stats:
        base = self.per_call[self.bare]
        return Stats.of([v - b for v, b in zip(self.per_call[name], base)])

    def ratio(self, name: str, reference: str) -> float | None:
        ref = self.overhead(reference).median
        if ref <= 0:
            return None
        return self.overhead(name).median / ref


def _block_sync(fn: Callable[[], Any], calls: int) -> float:
    perf = time.perf_counter
    rng = range(calls)
    start = perf()
    for _ in rng:
        fn()
    return perf() - start


async def _ablock(fn: Callable[[], Any], calls: int) -> float:
    perf = time.perf_counter
    rng = range(calls)
    start = perf()
    for _ in rng:
        await fn()
    return perf() - start


def run(op: str, variants: list[Variant], *, rounds: int, calls: int, warmup: int = 0,
        loop: asyncio.AbstractEventLoop | None = None, progress: Callable[[str], None] | None = None) -> Result:
    """Time every variant ``rounds`` times, ``calls`` calls per block, rotating the order each round."""
    per_call: dict[str, list[float]] = {v.name: [] for v in variants}
    warmup = warmup or max(3, calls // 10)
    n = len(variants)
    for r in range(rounds):
        order = variants[r % n:] + variants[:r % n]
        for v in order:
            v.activate()
            try:
                fn = v.call_fn()
                if v.is_async:
                    assert loop is not None
                    loop.run_until_complete(_ablock(fn, warmup))
                    gc.collect()
                    elapsed = loop.run_until_complete(_ablock(fn, calls))
                else:
                    _block_sync(fn, warmup)
                    gc.collect()
                    elapsed = _block_sync(fn, calls)
            finally:
                v.deactivate()
            per_call[v.name].append(elapsed / calls * 1e6)
        if progress is not None:
            progress(f"{op}: round {r + 1}/{rounds}")
    return Result(op, per_call)
