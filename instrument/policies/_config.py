"""Policy rules: parsed from INSTRUMENT_POLICIES (compact syntax) and INSTRUMENT_POLICIES_FILE (TOML).

Grammar (whitespace is ignored around every token)::

    rules   := rule ((";" | newline) rule)*
    rule    := GLOB "=" policy ("," policy)*
    policy  := NAME ["(" [arg ("," arg)*] ")"]
    arg     := VALUE | KEY "=" VALUE

    INSTRUMENT_POLICIES="http://payments:*=timeout(2s),retry(3,base=100ms),breaker(failure_rate=50%,window=20);
                         redis://*=breaker(window=10s,min_calls=5,wait=5s)"

A rule's GLOB is matched (``fnmatch``, case-sensitive, ``*`` also crosses ``/``) against the endpoint's
target identity; the **first** matching rule wins, rules of INSTRUMENT_POLICIES before those of the
file. Policies apply in the order written, the first outermost. See the README, Resilience policies.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from instrument import _context
from instrument.errors import ConfigError

from ._bulkhead import Bulkhead
from ._circuit import CircuitBreaker
from ._pipeline import Pipeline
from ._ratelimit import RateLimiter, RedisRateLimiter
from ._retry import Retry, RetryBudget
from ._timeout import Timeout

__all__ = ["Rule", "breakers", "bulkheads", "configure", "parse", "pipeline", "policies_for", "rules",
           "validate_settings"]

VARIABLE = "INSTRUMENT_POLICIES"
FILE_VARIABLE = "INSTRUMENT_POLICIES_FILE"
ACCEPTED = ("rules 'GLOB=policy(args),...;GLOB=...' with policies timeout, retry, breaker, bulkhead, "
            "ratelimit (see the README, Resilience policies)")
REGISTRY_SIZE = 1024

# -- values ------------------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(us|µs|ms|s|m|min|h)$")
_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


class _Bad(Exception):
    """A bad token inside one policy; turned into a ConfigError naming the rule."""


def _duration(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # TOML numbers are seconds
        return float(value)
    m = _DURATION.match(str(value).strip())
    if not m:
        raise _Bad(f"{value!r} is not a duration (a number with a unit: 500ms, 2s, 1.5m, 1h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _optional_duration(value: Any) -> float | None:
    return None if str(value).strip().lower() in ("none", "off", "inf") else _duration(value)


def _ratio(value: Any) -> float:
    text = str(value).strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise _Bad(f"{value!r} is not a percentage (50% or 0.5)") from None
    if not 0 <= number <= 1000:
        raise _Bad(f"{value!r} is out of range")
    return number


def _int(value: Any) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise _Bad(f"{value!r} is not a whole number") from None
    return number


def _number(value: Any) -> float:
    try:
        return float(str(value).strip())
    except ValueError:
        raise _Bad(f"{value!r} is not a number") from None


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise _Bad(f"{value!r} is not true/false")


def _text(value: Any) -> str:
    return str(value).strip()


def _rate(value: Any) -> float:
    """``100/s``, ``6000/min``, ``10/100ms``, or a number per second."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    count, sep, per = str(value).strip().partition("/")
    amount = _number(count)
    if not sep:
        return amount
    per = per.strip()
    unit = _UNITS.get(per) if per in _UNITS else _duration(per)
    return amount / unit


def _window(value: Any) -> tuple[int, str]:
    text = str(value).strip()
    if isinstance(value, int) or text.isdigit():
        return _int(value), "count"
    seconds = _duration(value)
    if seconds < 1 or seconds != int(seconds):
        raise _Bad(f"a time window is whole seconds >= 1s, got {value!r}")
    return int(seconds), "time"


def _outcomes(value: Any) -> str:
    from ._base import Outcomes

    try:
        return Outcomes(str(value)).spec
    except ValueError as exc:
        raise _Bad(f"{exc} in on={value!r} (accepted: errors|timeout|any|5xx|4xx|<code>)") from None


# Each policy: (class, positional option names, {option: (constructor kwarg, parser)}, {bare flag: (kwarg, value)})
_Option = tuple[str, Callable[[Any], Any]]
_POLICIES: dict[str, tuple[str, tuple[str, ...], dict[str, _Option], dict[str, tuple[str, Any]]]] = {
    "timeout": ("timeout", ("seconds",), {"seconds": ("seconds", _duration)}, {}),
    "retry": ("retry", ("attempts",), {
        "attempts": ("attempts", _int), "base": ("base", _duration), "cap": ("cap", _duration),
        "deadline": ("deadline", _duration), "on": ("on", _outcomes), "budget": ("budget", _ratio),
        "unsafe": ("unsafe", _flag), "max_retry_after": ("max_retry_after", _duration),
    }, {"unsafe": ("unsafe", True), "no_budget": ("budget", None)}),
    "breaker": ("circuit_breaker", (), {
        "failure_rate": ("failure_rate", _ratio), "slow": ("slow_call", _duration),
        "slow_rate": ("slow_rate", _ratio), "window": ("window", _window), "min_calls": ("min_calls", _int),
        "wait": ("wait", _duration), "probes": ("probes", _int), "on": ("on", _outcomes),
    }, {"force_open": ("state", "force_open"), "disabled": ("state", "disabled")}),
    "bulkhead": ("bulkhead", ("max_concurrent",), {
        "max_concurrent": ("max_concurrent", _int), "queue": ("max_queue", _int),
        "wait": ("max_wait", _optional_duration),
    }, {}),
    "ratelimit": ("rate_limit", ("rate",), {
        "rate": ("rate", _rate), "burst": ("burst", _number), "wait": ("max_wait", _duration),
        "redis": ("url", _text), "key": ("key", _text), "fail_open": ("fail_open", _flag),
    }, {}),
}
_ALIASES = {"circuit_breaker": "breaker", "cb": "breaker", "rate_limit": "ratelimit", "ratelimiter": "ratelimit",
            "rate_limiter": "ratelimit"}


@dataclass(frozen=True)
class PolicySpec:
    """One parsed policy: which one, and its constructor arguments."""

    kind: str  # "timeout", "retry", "breaker", "bulkhead", "ratelimit"
    options: Mapping[str, Any]
    text: str

    def build(self, target: str) -> Any:
        opts = dict(self.options)
        if self.kind == "timeout":
            if "seconds" not in opts:
                raise ValueError("timeout needs a duration: timeout(2s)")
            return Timeout(opts.pop("seconds"), target=target)
        if self.kind == "retry":
            budget = opts.pop("budget", True)
            if budget is not None and budget is not True:
                budget = RetryBudget(budget)
            return Retry(**opts, budget=budget, target=target)
        if self.kind == "breaker":
            state = opts.pop("state", None)
            if "window" in opts:
                opts["window"], opts["window_type"] = opts["window"]
            breaker = CircuitBreaker(target, **opts)
            if state == "force_open":
                breaker.force_open()
            elif state == "disabled":
                breaker.disable()
            return breaker
        if self.kind == "bulkhead":
            return Bulkhead(**opts, target=target)
        if "rate" not in opts:
            raise ValueError("ratelimit needs a rate: ratelimit(100/s)")
        if "url" in opts:
            return RedisRateLimiter(opts.pop("rate"), **opts, target=target)
        for shared_only in ("key", "fail_open"):
            if shared_only in opts:
                raise ValueError(f"{shared_only}= needs redis=<url>")
        return RateLimiter(opts.pop("rate"), **opts, target=target)


@dataclass(frozen=True)
class Rule:
    """``pattern`` (a glob on the target identity) and the policies for matching targets, outermost first."""

    pattern: str
    policies: tuple[PolicySpec, ...]
    text: str = ""
    source: str = VARIABLE
    index: int = 0
    _build_cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def matches(self, target: str) -> bool:
        return fnmatchcase(target, self.pattern)

    def build(self, target: str) -> tuple[Any, ...]:
        return tuple(spec.build(target) for spec in self.policies)


# -- parsing -----------------------------------------------------------------------------------------


def _split(text: str, seps: str) -> list[str]:
    """Split at any of ``seps`` outside parentheses; raises _Bad on unbalanced parentheses."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise _Bad(f"unbalanced ')' at {text[: i + 1].strip()!r}")
        elif ch in seps and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise _Bad(f"missing ')' in {text.strip()!r}")
    parts.append(text[start:])
    return parts


_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?$", re.S)


def _policy(text: str) -> PolicySpec:
    m = _NAME.match(text.strip())
    if not m:
        raise _Bad(f"{text.strip()!r} is not a policy (name or name(args))")
    name = m.group(1).lower()
    kind = _ALIASES.get(name, name)
    if kind not in _POLICIES:
        raise _Bad(f"unknown policy {m.group(1)!r} (accepted: timeout, retry, breaker, bulkhead, ratelimit)")
    args = [a.strip() for a in _split(m.group(2), ",")] if m.group(2) and m.group(2).strip() else []
    return _spec(kind, [(None, a) if "=" not in a else tuple(s.strip() for s in a.split("=", 1)) for a in args],
                 text.strip())


def _spec(kind: str, pairs: Iterable[tuple[str | None, Any]], text: str) -> PolicySpec:
    _, positional, options, flags = _POLICIES[kind]
    out: dict[str, Any] = {}
    position = 0
    for key, value in pairs:
        if key is None:
            if value == "":
                raise _Bad(f"{kind}: empty argument")
            word = str(value).lower()
            if word in flags:
                target_kw, flag_value = flags[word]
                out[target_kw] = flag_value
                continue
            if position >= len(positional):
                raise _Bad(f"{kind}: unexpected argument {value!r} (options: {', '.join(options)})")
            key = positional[position]
            position += 1
        key = key.lower()
        if key not in options:
            close = difflib.get_close_matches(key, list(options), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _Bad(f"{kind}: unknown option {key!r}{hint} (options: {', '.join(options)})")
        kw, parser = options[key]
        try:
            out[kw] = parser(value)
        except _Bad as exc:
            raise _Bad(f"{kind}: {key}={value!r}: {exc}") from None
    spec = PolicySpec(kind, out, text)
    try:  # construct once to check ranges (without side effects such as force_open's event)
        PolicySpec(kind, {k: v for k, v in out.items() if k != "state"}, text).build("validate")
    except (ValueError, TypeError) as exc:
        raise _Bad(f"{kind}: {exc}") from None
    return spec


def parse(text: str, *, variable: str = VARIABLE) -> tuple[Rule, ...]:
    """Parse the compact syntax into rules. Raises ConfigError naming the rule and the bad token."""
    rules: list[Rule] = []
    try:
        chunks = _split(text or "", ";\n")
    except _Bad as exc:
        raise ConfigError(variable, text, ACCEPTED, detail=str(exc)) from None
    for chunk in chunks:
        chunk = chunk.strip()
        if not chunk or chunk.startswith("#"):
            continue
        index = len(rules) + 1
        pattern, sep, body = chunk.partition("=")
        pattern = pattern.strip()
        try:
            if not sep or not pattern:
                raise _Bad("a rule is GLOB=policy,... (missing '=' or the pattern)")
            if not body.strip():
                raise _Bad("no policies after '='")
            specs = tuple(_policy(p) for p in _split(body, ","))
        except _Bad as exc:
            raise ConfigError(variable, chunk, ACCEPTED, detail=f"rule {index} ({pattern or chunk!r}): {exc}") from None
        rules.append(Rule(pattern, specs, chunk, variable, index))
    return tuple(rules)


def load_file(path: str) -> tuple[Rule, ...]:
    """Rules from a TOML file: ``[[rule]]`` tables with ``match`` and ``policies`` (compact strings) and/or
    one sub-table per policy (``[rule.retry] attempts = 3``), applied in the order written."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(FILE_VARIABLE, path, "a readable TOML file", detail=str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(FILE_VARIABLE, path, "a TOML file", detail=str(exc)) from None
    tables = data.get("rule", data.get("rules", []))
    if not isinstance(tables, list):
        raise ConfigError(FILE_VARIABLE, path, "[[rule]] tables", detail="'rule' must be an array of tables")
    rules: list[Rule] = []
    for index, table in enumerate(tables, 1):
        where = f"{path}: rule {index}"
        try:
            if not isinstance(table, dict) or not isinstance(table.get("match"), str):
                raise _Bad("each [[rule]] needs match = \"GLOB\"")
            specs: list[PolicySpec] = []
            for key, value in table.items():
                if key == "match":
                    continue
                if key == "policies":
                    texts = [value] if isinstance(value, str) else value
                    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                        raise _Bad("policies = \"timeout(2s), retry(3)\" or a list of such strings")
                    for text in texts:
                        specs.extend(_policy(p) for p in _split(text, ","))
                    continue
                kind = _ALIASES.get(key.lower(), key.lower())
                if kind not in _POLICIES:
                    raise _Bad(f"unknown policy table {key!r}")
                if not isinstance(value, dict):
                    raise _Bad(f"{key} must be a table of options")
                pairs: list[tuple[str | None, Any]] = []
                for opt, opt_value in value.items():
                    if isinstance(opt_value, bool) and opt.lower() in _POLICIES[kind][3]:
                        if opt_value:
                            pairs.append((None, opt))
                    else:
                        pairs.append((opt, opt_value))
                specs.append(_spec(kind, pairs, f"[{key}]"))
            if not specs:
                raise _Bad("no policies")
        except _Bad as exc:
            raise ConfigError(FILE_VARIABLE, path, ACCEPTED, detail=f"{where} ({table.get('match')!r}): {exc}") \
                from None
        rules.append(Rule(table["match"], tuple(specs), str(table["match"]), FILE_VARIABLE, index))
    return tuple(rules)


# -- the active rules and the registry ---------------------------------------------------------------

_lock = threading.Lock()
_rules: tuple[Rule, ...] = ()
_registry: OrderedDict[tuple[int, str], tuple[Any, ...]] = OrderedDict()


def rules() -> tuple[Rule, ...]:
    """The active rules, in matching order."""
    return _rules


def install(new_rules: Iterable[Rule]) -> None:
    """Make ``new_rules`` the active rules; every endpoint rebuilds its chain on its next call."""
    global _rules
    with _lock:
        _rules = tuple(new_rules)
        _registry.clear()
    _context.generation.bump()


def configure(rules_: str | Mapping[str, str] | Iterable[Rule] | None) -> tuple[Rule, ...]:
    """Replace the active rules at run time: compact text, ``{glob: "policies"}``, or Rule objects.

    ``configure(None)`` or ``configure("")`` removes every policy. Returns the installed rules.
    """
    if rules_ is None or isinstance(rules_, str):
        parsed = parse(rules_ or "")
    elif isinstance(rules_, Mapping):
        parsed = parse(";".join(f"{glob}={body}" for glob, body in rules_.items()))
    else:
        parsed = tuple(rules_)
    install(parsed)
    return parsed


def validate_settings(settings: Any) -> None:
    """Parse INSTRUMENT_POLICIES and INSTRUMENT_POLICIES_FILE (ConfigError if wrong) and install them."""
    parsed = parse(getattr(settings, "policies", "") or "")
    path = getattr(settings, "policies_file", None)
    if path:
        parsed = (*parsed, *load_file(path))
    install(parsed)


def match(target: str) -> tuple[int, Rule] | None:
    for i, rule in enumerate(_rules):
        if rule.matches(target):
            return i, rule
    return None


def policies_for(endpoint: Any) -> tuple[Any, ...]:
    """The policies for an endpoint, outermost first: () when no rule matches (the default).

    Policy objects are shared per target identity (one breaker per ``http://host:port``), held in a
    registry of the 1024 most recently resolved targets. An endpoint keeps the objects it resolved
    until the rules change.
    """
    target = endpoint.target if not isinstance(endpoint, str) else endpoint
    if not _rules:
        return ()
    found = match(target)
    if found is None:
        return ()
    key = (found[0], target)
    with _lock:
        policies = _registry.get(key)
        if policies is not None:
            _registry.move_to_end(key)
            return policies
    built = found[1].build(target)
    with _lock:
        policies = _registry.setdefault(key, built)
        _registry.move_to_end(key)
        while len(_registry) > REGISTRY_SIZE:
            _registry.popitem(last=False)
    return policies


def _configured(kind: type) -> Iterator[Any]:
    with _lock:
        groups = list(_registry.values())
    for policies in groups:
        for policy in policies:
            if isinstance(policy, kind):
                yield policy


def breakers() -> Iterator[CircuitBreaker]:
    """Every configured breaker (``.target``, ``.state``): what the breaker-state gauge reads."""
    return _configured(CircuitBreaker)


def bulkheads() -> Iterator[Bulkhead]:
    """Every configured bulkhead (``.target``, ``.active``): what the bulkhead-active gauge reads."""
    return _configured(Bulkhead)


def pipeline(text: str, name: str = "pipeline") -> Pipeline:
    """A Pipeline from the compact policy list: ``pipeline("timeout(2s), retry(3), breaker(window=20)")``."""
    try:
        specs = tuple(_policy(p) for p in _split(text, ","))
    except _Bad as exc:
        raise ConfigError("pipeline", text, ACCEPTED, detail=str(exc)) from None
    return Pipeline(name, tuple(spec.build(name) for spec in specs))
