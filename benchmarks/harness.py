"""Interleaved rounds: every variant of one operation is timed in the same process, round after round.

A *variant* is a way of making the same call (bare, under this toolkit, under OpenTelemetry contrib...).
Each round activates one variant at a time (patch / instrument), warms it up, times ``calls`` calls,
and deactivates it; the order of variants rotates from round to round, so that drift on a shared
machine (other processes, CPU frequency) spreads over all of them. The figures are:

- per-call µs of a variant in a round: the fastest of its individually timed calls, each after an untimed
  pause (network operations; see PAUSE_US), or ``elapsed / calls`` (micro benchmarks); on the process's
  CPU clock (default) or the wall clock;
- overhead of a variant in a round: its per-call µs minus the bare variant's **in the same round**;
- min / median / max over the rounds;
- ``A/A``: a second, identical bare variant; its overhead is pure noise and shows how far to trust the rest;
- ratio: median overhead of ours / median overhead of contrib.
"""

from __future__ import annotations

import asyncio
import gc
import random
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

    def ratio_interval(self, name: str, reference: str, *, level: float = 0.9,
                       resamples: int = 2000) -> tuple[float, float] | None:
        """A bootstrap interval of :meth:`ratio`: how far this run's ratio could be moved by its own noise;
        None when too few rounds."""
        def ratio(sample: list[tuple[float, float]]) -> float | None:
            ref = statistics.median(r for _, r in sample)
            return statistics.median(v for v, _ in sample) / ref if ref > 0 else None

        return self._bootstrap(name, reference, ratio, level, resamples)

    def difference(self, name: str, reference: str) -> Stats:
        """Per round, ``name`` minus ``reference`` (both timed in that round)."""
        return Stats.of([v - r for v, r in zip(self.per_call[name], self.per_call[reference])])

    def difference_interval(self, name: str, reference: str, *, level: float = 0.9,
                            resamples: int = 2000) -> tuple[float, float] | None:
        """A bootstrap interval of the median of :meth:`difference`; None when too few rounds."""
        return self._bootstrap(name, reference, lambda sample: statistics.median(v - r for v, r in sample),
                               level, resamples)

    def _bootstrap(self, name: str, reference: str, statistic: Callable[[list[tuple[float, float]]], float | None],
                   level: float, resamples: int) -> tuple[float, float] | None:
        """The rounds resampled with replacement, each keeping its pairing (both overheads are against that
        round's bare call), and ``statistic`` taken of every resample: its central ``level`` interval."""
        base = self.per_call[self.bare]
        pairs = [(v - b, r - b) for v, r, b in zip(self.per_call[name], self.per_call[reference], base)]
        if len(pairs) < 5:
            return None
        rng = random.Random(0)  # the same run gives the same interval
        values = []
        for _ in range(resamples):
            value = statistic(rng.choices(pairs, k=len(pairs)))
            if value is not None:
                values.append(value)
        if len(values) < resamples // 2:
            return None
        values.sort()
        tail = (1 - level) / 2
        return values[int(tail * len(values))], values[int((1 - tail) * len(values)) - 1]


CLOCKS = ("cpu", "wall")
BLOCK_STAT = ["min"]  # of a block's individually timed calls: "median" or "min" (python -m benchmarks --block)
# Untimed µs of spinning before each individually timed call (python -m benchmarks --pause). Back to back, a
# call finds the server still awake from the one before, and the faster the client, the more often: a bare
# pika publish costs ~42 µs of CPU back to back and ~52 µs after 5-80 µs of other work (the sender's send()
# then also wakes the broker). Back to back, that would charge the server's wake-up to every instrumented
# variant, as if it were instrumentation; paused, every variant's call starts with the server in the same
# state, as calls in an application do (it does other work between them).
PAUSE_US = [100]


def _pick(samples: list[int]) -> float:
    if BLOCK_STAT[0] == "min":
        return min(samples)
    return statistics.median(samples)


def _block_sync(fn: Callable[[], Any], calls: int, clock: str) -> float:
    """µs of ``calls`` individually timed calls, each after a pause (the fastest by default, the least
    disturbed; or the median: see BLOCK_STAT). ``cpu`` is this process's CPU time (all threads, so the span
    exporter's too)."""
    now = time.process_time_ns if clock == "cpu" else time.perf_counter_ns
    samples = [0] * calls
    for i in range(calls):
        _pause()
        t = now()
        fn()
        samples[i] = now() - t
    return _pick(samples) / 1000


async def _ablock(fn: Callable[[], Any], calls: int, clock: str) -> float:
    now = time.process_time_ns if clock == "cpu" else time.perf_counter_ns
    samples = [0] * calls
    for i in range(calls):
        _pause()
        t = now()
        await fn()
        samples[i] = now() - t
    return _pick(samples) / 1000


def _pause() -> None:
    """Spin PAUSE_US µs (no sleep: the process keeps its CPU and caches, only the server goes idle)."""
    end = time.perf_counter_ns() + PAUSE_US[0] * 1000
    while time.perf_counter_ns() < end:
        pass


def _block_total(fn: Callable[[], Any], calls: int, clock: str) -> float:
    """Mean µs of a block timed as a whole (micro benchmarks: calls far shorter than the clock's cost)."""
    now = time.process_time_ns if clock == "cpu" else time.perf_counter_ns
    rng = range(calls)
    t = now()
    for _ in rng:
        fn()
    return (now() - t) / calls / 1000


async def _ablock_total(fn: Callable[[], Any], calls: int, clock: str) -> float:
    now = time.process_time_ns if clock == "cpu" else time.perf_counter_ns
    rng = range(calls)
    t = now()
    for _ in rng:
        await fn()
    return (now() - t) / calls / 1000


def run(op: str, variants: list[Variant], *, rounds: int, calls: int, warmup: int = 0, clock: str = "wall",
        per_call: bool = True, loop: asyncio.AbstractEventLoop | None = None,
        progress: Callable[[str], None] | None = None) -> Result:
    """Time every variant ``rounds`` times, ``calls`` calls per block, rotating the order each round.

    ``per_call``: time each call and keep the block's median (I/O-bound operations); otherwise time the
    block as a whole (micro benchmarks)."""
    sync_block, async_block = (_block_sync, _ablock) if per_call else (_block_total, _ablock_total)
    results: dict[str, list[float]] = {v.name: [] for v in variants}
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
                    loop.run_until_complete(async_block(fn, warmup, clock))
                    if not per_call:
                        gc.collect()
                    value = loop.run_until_complete(async_block(fn, calls, clock))
                else:
                    sync_block(fn, warmup, clock)
                    if not per_call:  # per-call medians/minimums shrug off a collection; blocks do not
                        gc.collect()
                    value = sync_block(fn, calls, clock)
            finally:
                v.deactivate()
            results[v.name].append(value)
        if progress is not None:
            progress(f"{op}: round {r + 1}/{rounds}")
    return Result(op, results)
