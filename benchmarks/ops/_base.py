"""The shape of an operation and how its variants are built from it."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness import Variant

# Run-wide things an operation may need (the HTTP server's port, the async loop).
@dataclass
class Ctx:
    http_port: int = 0
    loop: Any = None
    closers: list[Callable[[], Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def on_close(self, fn: Callable[[], Any]) -> None:
        self.closers.append(fn)


@dataclass
class OpSpec:
    key: str                      # --only name
    title: str                    # table row
    integrations: tuple[str, ...]  # ours, patched/unpatched per round
    contrib: Callable[[], Any]    # -> a BaseInstrumentor instance
    make: Callable[[Ctx], Callable[[], Any]]  # build a client (while its variant is active) and return the call
    policy_glob: str              # target glob for "telemetry + breaker + timeout"
    service: tuple[str, int] | None = None
    needs_http: bool = False
    is_async: bool = False
    calls: int = 20               # per block in the full mode (rounds x calls x 6 variants in all)
    contrib_kwargs: dict[str, Any] | Callable[[Ctx], dict[str, Any]] = field(default_factory=dict)


def service_up(addr: tuple[str, int] | None) -> bool:
    if addr is None:
        return True
    try:
        with socket.create_connection(addr, timeout=0.5):
            return True
    except OSError:
        return False


def missing_integrations(spec: OpSpec) -> list[str]:
    from instrument import integrations

    return [n for n in spec.integrations if not integrations._exists(integrations.REGISTRY[n][1])]


POLICIES = "timeout(2s),breaker"


def variants(spec: OpSpec, ctx: Ctx, tel: Any) -> list[Variant]:
    from instrument import integrations, policies

    def patch() -> None:
        for n in spec.integrations:
            if not integrations.patch(n):
                raise RuntimeError(f"could not patch {n}")

    def unpatch() -> None:
        for n in reversed(spec.integrations):
            integrations.unpatch(n)

    def with_policies() -> None:
        policies.configure(f"{spec.policy_glob}={POLICIES}")
        patch()

    def without_policies() -> None:
        unpatch()
        policies.configure("")

    def sampled_out(on: Callable[[], None], off: Callable[[], None]) -> tuple[Callable[[], None], Callable[[], None]]:
        """``on`` and ``off`` with the sampler dropping every trace in between (metrics still on)."""

        def enter() -> None:
            tel.sampler.sampled_out(True)
            on()

        def leave() -> None:
            off()
            tel.sampler.sampled_out(False)

        return enter, leave

    instrumentor = spec.contrib()

    def contrib_on() -> None:
        kwargs = spec.contrib_kwargs(ctx) if callable(spec.contrib_kwargs) else spec.contrib_kwargs
        instrumentor.instrument(tracer_provider=tel.tracer_provider, meter_provider=tel.meter_provider, **kwargs)

    def contrib_off() -> None:
        instrumentor.uninstrument()

    def make() -> Callable[[], Any]:
        return spec.make(ctx)

    a = spec.is_async
    return [
        Variant("bare", make, is_async=a),
        Variant("A/A", make, is_async=a),
        Variant("ours", make, patch, unpatch, is_async=a),
        Variant("ours+bt", make, with_policies, without_policies, is_async=a),
        Variant("ours sampled-out", make, *sampled_out(patch, unpatch), is_async=a),
        Variant("contrib", make, contrib_on, contrib_off, is_async=a),
        Variant("contrib sampled-out", make, *sampled_out(contrib_on, contrib_off), is_async=a),
        Variant("bare+record", lambda: _recorded(make(), tel, a), is_async=a),
    ]


def _recorded(call: Callable[[], Any], tel: Any, is_async: bool) -> Callable[[], Any]:
    """The bare call followed by one SDK histogram record of its duration (the floor's attributes): what a
    record costs inside a real call, with the caches the client's own work leaves, next to the floor's
    figure for the same record in a loop."""
    from time import perf_counter

    from benchmarks.micro import RECORD_ATTRIBUTES

    record = tel.meter_provider.get_meter("benchmarks.record").create_histogram("bench.record.duration",
                                                                                  unit="s").record
    if is_async:
        async def arecorded() -> None:
            start = perf_counter()
            await call()
            record(perf_counter() - start, RECORD_ATTRIBUTES)

        return arecorded

    def recorded() -> None:
        start = perf_counter()
        call()
        record(perf_counter() - start, RECORD_ATTRIBUTES)

    return recorded


@contextmanager
def running(op: str, variant: str) -> Iterator[tuple[OpSpec, Callable[[], Any]]]:
    """One variant of one operation, active in this process (the tools that look inside a call: instructions,
    opcodes): its spec and its call; what it opened (the HTTP server, clients) is closed after."""
    from benchmarks import _telemetry, servers
    from benchmarks.ops import load

    tel = _telemetry.install()
    spec = load(op)
    http = servers.Subprocess("http") if spec.needs_http else None
    try:
        ctx = Ctx(http_port=http.port if http else 0)
        chosen = next(v for v in variants(spec, ctx, tel) if v.name == variant)
        chosen.activate()
        yield spec, chosen.call_fn()
        chosen.deactivate()
        for close in ctx.closers:
            close()
    finally:
        if http:
            http.stop()
