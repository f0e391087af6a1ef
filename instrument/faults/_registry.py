"""The active fault rules: those from ``INSTRUMENT_FAULTS`` plus those of open :func:`inject` scopes.

Each installed rule is *armed*: it carries its own seeded random generator and counters behind a lock,
so sampling is reproducible with a seed and counts ("first=3") are exact across threads. Installing or
removing rules bumps ``instrument._context.generation`` so endpoints rebuild their chains; while no rule
is installed, :func:`faults_for` returns None and calls pay nothing.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from fnmatch import fnmatchcase

from instrument import _context
from instrument.faults._rules import Rule

__all__ = ["Armed", "active", "arm", "header_enabled", "install_env", "matches_endpoint", "pop", "push", "server_rules"]


class Armed:
    """A rule installed with its own random generator and counters (thread-safe)."""

    __slots__ = ("_lock", "fired", "rng", "rule", "seen")

    def __init__(self, rule: Rule, rng: random.Random) -> None:
        self.rule = rule
        self.rng = rng
        self.seen = 0  # matching calls considered
        self.fired = 0  # faults injected
        self._lock = threading.Lock()

    def matches_op(self, op: str | None) -> bool:
        ops = self.rule.ops
        if not ops:
            return True
        if op is None:
            return False
        up = op.upper()
        return any(fnmatchcase(up, pattern.upper()) for pattern in ops)

    def take(self) -> float | None:
        """Decide for one matching call: None (no fault), else the delay in seconds to apply."""
        rule = self.rule
        with self._lock:
            if rule.first is not None and self.seen >= rule.first:
                return None
            self.seen += 1
            if rule.limit is not None and self.fired >= rule.limit:
                return None
            if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                return None
            self.fired += 1
            low, high = rule.delay
            return self.rng.uniform(low, high) if high > low else high

    def __repr__(self) -> str:
        return f"<Armed {self.rule.text!r} seen={self.seen} fired={self.fired}>"


def arm(rules: Iterable[Rule], seed: int | None, scope: str) -> tuple[Armed, ...]:
    """Give each rule its own generator: ``Random(f"{seed}:{scope}:{index}")`` when seeded."""
    out = []
    for index, rule in enumerate(rules):
        rng = random.Random(f"{seed}:{scope}:{index}") if seed is not None else random.Random()  # noqa: S311 - not crypto
        out.append(Armed(rule, rng))
    return tuple(out)


_lock = threading.Lock()
_env: tuple[Armed, ...] = ()
_scopes: list[tuple[Armed, ...]] = []
_active: tuple[Armed, ...] = ()
_server: tuple[Armed, ...] = ()
header_enabled = [False]  # INSTRUMENT_FAULTS_HEADER_ENABLED, set by validate_settings


def _refresh() -> None:
    global _active, _server
    scoped = tuple(a for scope in reversed(_scopes) for a in scope)  # the newest scope decides first
    _active = scoped + _env
    _server = tuple(a for a in _active if a.rule.server)
    _context.generation.bump()


def active() -> tuple[Armed, ...]:
    """Every installed rule, newest scope first, environment rules last."""
    return _active


def server_rules() -> tuple[Armed, ...]:
    """The installed server-side rules (``server:`` selectors), newest scope first."""
    return _server


def install_env(rules: Iterable[Rule], seed: int | None) -> None:
    """Replace the environment rules (counters start afresh)."""
    global _env
    with _lock:
        _env = arm(rules, seed, "env")
        _refresh()


def push(armed: tuple[Armed, ...]) -> None:
    with _lock:
        _scopes.append(armed)
        _refresh()


def pop(armed: tuple[Armed, ...]) -> None:
    with _lock:
        for i in range(len(_scopes) - 1, -1, -1):
            if _scopes[i] is armed:
                del _scopes[i]
                break
        _refresh()


def matches_endpoint(rule: Rule, kind: str, system: str, target: str, has_status: bool) -> bool:
    """Whether ``rule`` can ever apply to calls on this endpoint (the operation is checked per call)."""
    if rule.kind == "server":
        return False
    if rule.kind is not None and rule.kind != kind:
        return False
    if rule.system is not None and rule.system != system.lower():
        return False
    if rule.fault == "status" and not has_status:
        return False
    return fnmatchcase(target, rule.target)
