"""Compose an endpoint's policy chain: configured policies (first is outermost), then faults (innermost).

Faults sit innermost so that, to every policy, an injected fault looks exactly like the dependency failing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from instrument._call import Endpoint


def build_chain(endpoint: Endpoint) -> Any:
    """A ``Pipeline`` for ``endpoint``, or None when no policy or fault applies to it (the fast path)."""
    from instrument.faults import faults_for
    from instrument.policies import Pipeline, policies_for

    chain = tuple(policies_for(endpoint))
    fault = faults_for(endpoint)
    if fault is not None:
        chain = (*chain, fault)
    if not chain:
        return None
    return Pipeline(endpoint.target, chain)
