"""Where the toolkit's per-call time goes, without I/O: ``python -m benchmarks.breakdown``.

requests ``Session.get`` on an adapter that returns a canned response (no socket, no server), so the
numbers are the instrumentation's CPU alone, low-noise; plus the pieces of ``Endpoint.call`` timed on
their own. Same interleaved harness (µs per call, median (min..max) of the rounds).
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks import _telemetry, harness
from benchmarks.harness import Variant


def _session() -> Any:
    import requests
    from requests.adapters import BaseAdapter

    class Canned(BaseAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:
            r = requests.Response()
            r.status_code = 200
            r._content = b"ok"  # noqa: SLF001
            r.request = request
            r.url = request.url
            return r

        def close(self) -> None:
            pass

    s = requests.Session()
    s.trust_env = False
    s.mount("http://", Canned())
    return s


def variants(tel: Any) -> list[Variant]:
    from opentelemetry import propagate
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from requests.structures import CaseInsensitiveDict

    from instrument import _call, _instruments, integrations, policies

    url = "http://127.0.0.1:8080/items"

    def get() -> Any:
        s = _session()
        return lambda: s.get(url)

    contrib = RequestsInstrumentor()

    def on(*names: str) -> Any:
        return lambda: [integrations.patch(n) for n in names]

    def off(*names: str) -> Any:
        return lambda: [integrations.unpatch(n) for n in names]

    tracer = _instruments.tracer()
    ep = _call.endpoint("http", "http", "http://127.0.0.1:8080", server_address="127.0.0.1", server_port=8080)
    op = ep.op("GET")
    attrs = {**op.span_attributes, "url.full": url}

    def start_end() -> Any:
        return lambda: tracer.start_span("GET", kind=op.span_kind, attributes=attrs).end()

    def inject() -> Any:
        span = tracer.start_span("GET")
        from opentelemetry.trace import set_span_in_context

        ctx = set_span_in_context(span)
        carrier = CaseInsensitiveDict()
        return lambda: propagate.inject(carrier, context=ctx)

    def record() -> Any:
        h = op.histogram
        a = op.metric_attributes(200, None)
        return lambda: h.record(0.001, a)

    def so_on() -> None:
        tel.sampler.sampled_out(True)
        integrations.patch("requests")

    def so_off() -> None:
        integrations.unpatch("requests")
        tel.sampler.sampled_out(False)

    def bt_on() -> None:
        policies.configure("http://127.0.0.1:*=timeout(2s),breaker")
        integrations.patch("requests")

    def bt_off() -> None:
        integrations.unpatch("requests")
        policies.configure("")

    return [
        Variant("bare", get),
        Variant("A/A", get),
        Variant("requests: ours", get, on("requests"), off("requests")),
        Variant("requests: ours+bt", get, bt_on, bt_off),
        Variant("requests: ours sampled-out", get, so_on, so_off),
        Variant("requests: contrib", get, lambda: contrib.instrument(), lambda: contrib.uninstrument()),
        Variant("piece: start_span+end (our attrs)", start_end),
        Variant("piece: propagate.inject", inject),
        Variant("piece: histogram.record", record),
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--calls", type=int, default=2000)
    args = p.parse_args()
    tel = _telemetry.install()
    res = harness.run("breakdown", variants(tel), rounds=args.rounds, calls=args.calls, clock="cpu", per_call=False)
    print(f"bare requests.get on a canned adapter: {res.stats('bare').fmt(2)} µs")
    for name in res.per_call:
        if name.startswith("piece:"):  # a piece on its own: its whole cost, not a difference from bare
            print(f"{name:40s} {res.stats(name).fmt(2)}")
        elif name != "bare":
            print(f"{name:40s} {res.overhead(name).fmt(2)}")


if __name__ == "__main__":
    main()
