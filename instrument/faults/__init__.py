"""Fault injection: rehearse a dependency failing, from the environment, from code or from pytest.

Three ways in, one rule grammar (:mod:`instrument.faults._rules`, documented in the README):

- ``INSTRUMENT_FAULTS="http://payments:*: error 30%; redis://*: timeout 2s first=3"`` (and
  ``INSTRUMENT_FAULTS_SEED``), parsed at ``init()`` by :func:`validate_settings`;
- ``with inject("postgresql://*/orders op=SELECT: latency 50ms-200ms"):`` or ``@inject(...)``;
- the pytest ``faults`` fixture (``instrument.pytest_plugin``).

Client faults run innermost in the call pipeline (:func:`faults_for` gives the core a
:class:`FaultInjector` per endpoint), so retries and breakers see them as the dependency failing, and
raise the client's own exception types (also :class:`~instrument.errors.InjectedFault`). Server faults
for the WSGI/ASGI middleware come from :func:`server_fault`. Every injected fault emits a
``fault.injected`` policy event (span event, ``instrument.fault.injected`` counter, log line).
With no rule installed :func:`faults_for` returns None and calls pay nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from instrument.faults import _registry
from instrument.faults._api import inject
from instrument.faults._injector import FaultInjector, mark_injected
from instrument.faults._rules import FAULT_KINDS, Rule, parse_rules
from instrument.faults._server import HEADER_PREFIX, ServerFault, reseed, server_fault

if TYPE_CHECKING:
    from instrument._call import Endpoint

__all__ = [
    "FAULT_KINDS",
    "FaultInjector",
    "HEADER_PREFIX",
    "Rule",
    "ServerFault",
    "active_rules",
    "faults_for",
    "inject",
    "mark_injected",
    "parse_rules",
    "server_fault",
    "validate_settings",
]


def faults_for(endpoint: Endpoint) -> FaultInjector | None:
    """The injector for ``endpoint`` from the active rules, or None when no rule can match its target.

    Called by the core only when the rules change (``instrument._context.generation``).
    """
    rules = _registry.active()
    if not rules:
        return None
    has_status = getattr(endpoint.errors, "status", None) is not None
    matched = tuple(a for a in rules
                    if _registry.matches_endpoint(a.rule, endpoint.kind, endpoint.system, endpoint.target, has_status))
    if not matched:
        return None
    return FaultInjector(endpoint.target, matched)


def validate_settings(settings: Any) -> None:
    """Parse ``settings.faults`` (``INSTRUMENT_FAULTS``) and install them as the environment's rules.

    Also takes ``settings.faults_seed`` (``INSTRUMENT_FAULTS_SEED``) and ``settings.faults_header``
    (``INSTRUMENT_FAULTS_HEADER_ENABLED``).

    Raises:
        ConfigError: naming ``INSTRUMENT_FAULTS``, the rule (index and text) and the offending token.
    """
    rules = parse_rules(getattr(settings, "faults", "") or "")
    seed = getattr(settings, "faults_seed", None)
    _registry.header_enabled[0] = bool(getattr(settings, "faults_header", False))
    reseed(seed)
    _registry.install_env(rules, seed)


def active_rules() -> tuple[Rule, ...]:
    """Every rule in force now: open :func:`inject` scopes first (newest first), then the environment's."""
    return tuple(a.rule for a in _registry.active())
