"""Compose an endpoint's policy chain: configured policies (first is outermost), then faults (innermost).

Faults sit innermost so that, to every policy, an injected fault looks exactly like the dependency failing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from instrument._call import Endpoint


def build_chain(endpoint: Endpoint) -> Any:
    """A ``Pipeline`` for ``endpoint``, or None when no policy or fault applies to it (the fast path)."""
    import sys

    # Rules exist only once their module is loaded (by settings that name some, or by code that adds them).
    chain: tuple[Any, ...] = ()
    if "instrument.policies" in sys.modules:
        from instrument.policies import policies_for

        chain = tuple(policies_for(endpoint))
    fault = None
    if "instrument.faults" in sys.modules:
        from instrument.faults import faults_for

        fault = faults_for(endpoint)
    if fault is not None:
        chain = (*chain, fault)
    if not chain:
        return None
    from instrument.policies import Pipeline

    return Pipeline(endpoint.target, chain)
