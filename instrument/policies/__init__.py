"""Resilience policies: circuit breaker, timeout, retry, bulkhead, rate limit, composed into pipelines.

Applied to patched clients by rules (INSTRUMENT_POLICIES, INSTRUMENT_POLICIES_FILE; see
the README, Resilience policies) and usable on their own around any function::

    from instrument.policies import CircuitBreaker, Pipeline, Retry, Timeout

    payments = Pipeline("payments", (Timeout(10), Retry(3), CircuitBreaker("payments"), Timeout(2)))
    payments.call(fetch, order_id)          # sync
    await payments.acall(afetch, order_id)  # async

    @Retry(attempts=3)
    def fetch(order_id): ...

    with CircuitBreaker("inventory").guard():
        ...

The default is observability only: with no rule, no policy changes behaviour.
"""

from __future__ import annotations

from ._base import Outcomes, retry_after
from ._bulkhead import Bulkhead
from ._circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from ._config import Rule, breakers, bulkheads, configure, parse, pipeline, policies_for, rules, validate_settings
from ._pipeline import Pipeline
from ._ratelimit import RateLimiter, RedisRateLimiter
from ._retry import Retry, RetryBudget, backoff
from ._timeout import Timeout, remaining

__all__ = [
    "Bulkhead",
    "CLOSED",
    "CircuitBreaker",
    "HALF_OPEN",
    "OPEN",
    "Outcomes",
    "Pipeline",
    "RateLimiter",
    "RedisRateLimiter",
    "Retry",
    "RetryBudget",
    "Rule",
    "Timeout",
    "backoff",
    "breakers",
    "configure",
    "parse",
    "pipeline",
    "policies_for",
    "remaining",
    "retry_after",
    "rules",
    "validate_settings",
]
