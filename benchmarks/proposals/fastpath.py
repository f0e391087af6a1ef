"""The proposed hot-path changes, as run-time replacements, so that ``python -m benchmarks.breakdown``
measures before and after in one interleaved run. The same code is in ``fastpath.diff`` for the lead.

P1 ``_inject``: W3C ``traceparent`` written directly from the span context when the global propagator is
   the toolkit's default (tracecontext + baggage) and the context carries no baggage; otherwise (b3, jaeger,
   baggage present, an application-installed propagator) the generic ``propagate.inject``. Saves the
   composite propagator's per-call work: two ``Context`` copies, ``get_current_span`` x2, baggage lookup,
   the ``DefaultSetter`` indirection and the regex-free but generic formatting.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_default: list[Any] = [None, False]  # [textmap seen, is it the default composite]


def _is_default_textmap(textmap: Any) -> bool:
    if _default[0] is not textmap:
        props = getattr(textmap, "_propagators", None)
        _default[0] = textmap
        _default[1] = (type(textmap) is CompositePropagator and props is not None
                       and [type(p) for p in props] in ([TraceContextTextMapPropagator, W3CBaggagePropagator],
                                                        [TraceContextTextMapPropagator]))
    return _default[1]


def inject(carrier: Any, span: Any) -> None:
    """P1: what ``propagate.inject(carrier, context=set_span_in_context(span))`` does, minus the generic path."""
    textmap = propagate.get_global_textmap()
    if _is_default_textmap(textmap) and not baggage.get_all():
        sc = span.get_span_context()
        if sc.is_valid:
            carrier["traceparent"] = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"
            if sc.trace_state:
                carrier["tracestate"] = sc.trace_state.to_header()
        return
    textmap.inject(carrier, context=trace.set_span_in_context(span))


class _Propagate:
    """Stands in for ``instrument._call.propagate`` so ``_start`` calls ``inject`` above (run-time emulation)."""

    @staticmethod
    def inject(carrier: Any, context: Any = None) -> None:
        inject(carrier, trace.get_current_span(context))


def install_p1() -> Any:
    from instrument import _call

    saved = _call.propagate
    _call.propagate = _Propagate  # type: ignore[assignment]
    return lambda: setattr(_call, "propagate", saved)
