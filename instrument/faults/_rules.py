"""Fault rules: the compact grammar of ``INSTRUMENT_FAULTS``, parsed once into frozen :class:`Rule` objects.

Grammar (whitespace-separated tokens; ``;`` or a newline separates rules)::

    rules    := rule ( (";" | NEWLINE) rule )*
    rule     := selector ":" WS fault            # the first colon followed by whitespace ends the selector
    selector := GLOB ( "kind=" KIND | "system=" NAME | "op=" NAME ("," NAME)* )*
    fault    := "latency" DURATION ["-" DURATION]
              | "error" | "reset"
              | "timeout" [DURATION]
              | "status" CODE ["retry-after=" DURATION]
    option   := PERCENT | "p=" PROB | PROB | "first=" INT | "limit=" INT
    DURATION := NUMBER ("us" | "ms" | "s" | "m")     (retry-after also takes bare seconds)

``GLOB`` is an :func:`fnmatch.fnmatch` pattern on the target identity (``http://payments:8080``,
``postgresql://db:5432/orders``, ``redis://cache:6379``, ``rabbitmq://mq:5672``). A ``server:`` prefix
(``server:/api/*``) makes a server-side rule for the WSGI/ASGI middleware, matched on the request path
(or on ``target + path`` when the pattern contains ``://``); server rules take only latency and status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from instrument.errors import ConfigError

__all__ = ["FAULT_KINDS", "Rule", "parse_rules"]

FAULT_KINDS = ("latency", "error", "timeout", "status", "reset")
_ENDPOINT_KINDS = ("http", "db", "messaging")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(us|ms|s|m)$")
_PROB = re.compile(r"^(?:0?\.\d+|0|1|1\.0*|0\.)$")
_SEPARATOR = re.compile(r":\s+")

ACCEPTED = (
    "rules '<target-glob> [kind=|system=|op=...]: <fault> [options]' separated by ';'; "
    "faults: latency 50ms[-200ms], error, reset, timeout [2s], status 503 [retry-after=1s]; "
    "options: 30%, p=0.3, first=N, limit=N"
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One fault rule: where it applies (selector), what it does (fault) and how often (options).

    Build it from text with :func:`parse_rules`, or directly::

        Rule("http://payments:*", "status", status=503, retry_after=1.0, probability=0.1)

    Args:
        target: fnmatch glob on the target identity (server rules: on the request path).
        fault: one of ``latency``, ``error``, ``timeout``, ``status``, ``reset``.
        kind: only endpoints of this kind (``http``, ``db``, ``messaging``; ``server`` for server rules).
        system: only this system (``postgresql``, ``redis`` ...).
        ops: only these operation names (``GET``, ``SELECT``, ``publish``; case-insensitive globs).
        delay: seconds ``(low, high)``: latency sampled uniformly; timeout waits ``high``.
        status: the HTTP status code of a ``status`` fault.
        retry_after: seconds for the synthesized ``Retry-After`` header.
        probability: chance in [0, 1] that a matching call gets the fault.
        first: only the first N matching calls are candidates.
        limit: at most N faults are injected by this rule.

    .. versionadded:: 0.1
    """

    target: str
    fault: str
    kind: str | None = None
    system: str | None = None
    ops: tuple[str, ...] = ()
    delay: tuple[float, float] = (0.0, 0.0)
    status: int | None = None
    retry_after: float | None = None
    probability: float = 1.0
    first: int | None = None
    limit: int | None = None
    text: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.fault not in FAULT_KINDS:
            raise ValueError(f"fault must be one of {', '.join(FAULT_KINDS)}, not {self.fault!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], not {self.probability!r}")
        if self.fault == "status" and (self.status is None or not 100 <= self.status <= 599):
            raise ValueError(f"a status fault needs a status code in 100..599, not {self.status!r}")
        if self.kind == "server" and self.fault not in ("latency", "status"):
            raise ValueError(f"server rules take latency or status faults, not {self.fault!r}")
        low, high = self.delay
        if not 0.0 <= low <= high:
            raise ValueError(f"delay must be 0 <= low <= high, not {self.delay!r}")
        if not self.text:
            object.__setattr__(self, "text", self.target)

    @property
    def server(self) -> bool:
        return self.kind == "server"


def parse_duration(token: str, *, bare_seconds: bool = False) -> float:
    """``50ms`` -> 0.05. Raises ValueError on anything else."""
    m = _DURATION.match(token.strip().lower())
    if m:
        return float(m.group(1)) * _UNITS[m.group(2)]
    if bare_seconds:
        try:
            value = float(token)
        except ValueError:
            pass
        else:
            if value >= 0 and value != float("inf"):
                return value
    raise ValueError(token)


class _Bad(Exception):
    def __init__(self, token: str, why: str) -> None:
        self.token = token
        self.why = why


def parse_rules(text: str, *, variable: str = "INSTRUMENT_FAULTS") -> tuple[Rule, ...]:
    """Parse rule text (see the module docstring) into rules, in order.

    Raises:
        ConfigError: naming ``variable``, the rule (1-based index and text) and the offending token.
    """
    rules: list[Rule] = []
    chunks = [c.strip() for c in re.split(r"[;\n]", text or "")]
    index = 0
    for chunk in chunks:
        if not chunk or chunk.startswith("#"):
            continue
        index += 1
        try:
            rules.append(_parse_rule(chunk))
        except _Bad as bad:
            raise ConfigError(variable, text, ACCEPTED,
                              detail=f"rule {index} {chunk!r}, token {bad.token!r}: {bad.why}") from None
    return tuple(rules)


def _parse_rule(chunk: str) -> Rule:
    m = _SEPARATOR.search(chunk)
    if m is None:
        raise _Bad(chunk, "expected '<target-glob>: <fault>' (a colon then a space)")
    selector = chunk[: m.start()].split()
    spec = chunk[m.end():].split()
    if not selector:
        raise _Bad(chunk, "missing the target glob")
    glob, kind, system, ops = selector[0], None, None, ()
    if glob.startswith("server:"):
        glob, kind = glob[len("server:"):] or "*", "server"
    for token in selector[1:]:
        key, sep, value = token.partition("=")
        if not sep or not value:
            raise _Bad(token, "unknown selector token")
        if key == "kind" and kind != "server":
            if value not in _ENDPOINT_KINDS:
                raise _Bad(token, f"kind must be one of {', '.join(_ENDPOINT_KINDS)}")
            kind = value
        elif key == "system":
            system = value.lower()
        elif key in ("op", "ops", "method"):
            ops = tuple(o for o in value.split(",") if o)
        else:
            raise _Bad(token, "unknown selector token")
    if not spec:
        raise _Bad(chunk, "missing the fault after the colon")
    fault = spec[0].lower()
    if fault not in FAULT_KINDS:
        raise _Bad(spec[0], f"unknown fault (one of {', '.join(FAULT_KINDS)})")
    if kind == "server" and fault not in ("latency", "status"):
        raise _Bad(spec[0], "server rules take only latency or status faults")
    args: dict[str, object] = {}
    rest = spec[1:]
    if fault == "latency":
        if not rest:
            raise _Bad(chunk, "latency needs a duration such as 50ms or 50ms-200ms")
        args["delay"] = _range(rest.pop(0))
    elif fault == "timeout":
        if rest and _DURATION.match(rest[0].lower()):
            d = _duration(rest.pop(0))
            args["delay"] = (d, d)
    elif fault == "status":
        if not rest or not rest[0].isdigit() or not 100 <= int(rest[0]) <= 599:
            raise _Bad(rest[0] if rest else chunk, "status needs an HTTP code in 100..599")
        args["status"] = int(rest.pop(0))
    for token in rest:
        low = token.lower()
        if low.endswith("%"):
            try:
                pct = float(low[:-1])
            except ValueError:
                raise _Bad(token, "bad percentage") from None
            if not 0.0 <= pct <= 100.0:
                raise _Bad(token, "a percentage must be in 0..100")
            args["probability"] = pct / 100.0
        elif low.startswith(("p=", "probability=")) or _PROB.match(low):
            raw = low.partition("=")[2] if "=" in low else low
            try:
                prob = float(raw)
            except ValueError:
                raise _Bad(token, "bad probability") from None
            if not 0.0 <= prob <= 1.0:
                raise _Bad(token, "a probability must be in [0, 1]")
            args["probability"] = prob
        elif low.startswith(("first=", "limit=")):
            key, _, raw = low.partition("=")
            if not raw.isdigit():
                raise _Bad(token, f"{key} needs a whole number")
            args[key] = int(raw)
        elif low.startswith("retry-after=") and fault == "status":
            try:
                args["retry_after"] = parse_duration(low.partition("=")[2], bare_seconds=True)
            except ValueError:
                raise _Bad(token, "retry-after needs seconds such as 1s or 1") from None
        else:
            raise _Bad(token, f"unknown option for {fault}")
    try:
        return Rule(glob, fault, kind=kind, system=system, ops=ops, text=chunk, **args)  # type: ignore[arg-type]
    except ValueError as exc:
        raise _Bad(chunk, str(exc)) from None


def _duration(token: str) -> float:
    try:
        return parse_duration(token)
    except ValueError:
        raise _Bad(token, "bad duration (use e.g. 50ms, 2s, 1.5s)") from None


def _range(token: str) -> tuple[float, float]:
    low, sep, high = token.partition("-")
    a = _duration(low)
    b = _duration(high) if sep else a
    if b < a:
        raise _Bad(token, "a latency range must be low-high")
    return (a, b)
