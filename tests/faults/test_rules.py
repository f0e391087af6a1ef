"""The INSTRUMENT_FAULTS grammar: what parses, and that every bad rule names the rule and the token."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import instrument.faults
from instrument.errors import ConfigError
from instrument.faults import Rule, parse_rules, validate_settings
from instrument.faults import _registry
from instrument.faults._rules import parse_duration

EXAMPLE = ("http://payments:*: error 30%; postgresql://*/orders op=SELECT: latency 50ms-200ms; "
           "redis://*: timeout 2s first=3; http://*: status 503 retry-after=1s 10%")


def test_exports_are_sorted_and_complete() -> None:
    assert instrument.faults.__all__ == sorted(instrument.faults.__all__)
    for name in ("faults_for", "inject", "parse_rules", "server_fault", "validate_settings"):
        assert name in instrument.faults.__all__


def test_the_documented_example() -> None:
    error, latency, timeout, status = parse_rules(EXAMPLE)
    assert (error.target, error.fault, error.probability) == ("http://payments:*", "error", 0.3)
    assert (latency.target, latency.ops, latency.delay) == ("postgresql://*/orders", ("SELECT",), (0.05, 0.2))
    assert (timeout.fault, timeout.delay, timeout.first) == ("timeout", (2.0, 2.0), 3)
    assert (status.status, status.retry_after, status.probability) == (503, 1.0, 0.1)
    assert error.text == "http://payments:*: error 30%"


@pytest.mark.parametrize(("text", "expected"), [
    ("*: reset", Rule("*", "reset")),
    ("* kind=db system=PostgreSQL: error p=0.5", Rule("*", "error", kind="db", system="postgresql", probability=0.5)),
    ("*: error 0.25 limit=2", Rule("*", "error", probability=0.25, limit=2)),
    ("* op=GET,POST: timeout", Rule("*", "timeout", ops=("GET", "POST"))),
    ("*: latency 1.5s", Rule("*", "latency", delay=(1.5, 1.5))),
    ("*: latency 500us-2m", Rule("*", "latency", delay=(0.0005, 120.0))),
    ("*: status 429 retry-after=3", Rule("*", "status", status=429, retry_after=3.0)),
    ("server:/api/* op=POST: status 503 5%", Rule("/api/*", "status", kind="server", ops=("POST",), status=503,
                                                  probability=0.05)),
    ("server:: latency 10ms", Rule("*", "latency", kind="server", delay=(0.01, 0.01))),
])
def test_rules_parse(text: str, expected: Rule) -> None:
    assert parse_rules(text) == (expected,)


def test_separators_comments_and_blank_rules() -> None:
    rules = parse_rules("a://*: error\n# a comment\n;; b://*: reset ;\n")
    assert [r.target for r in rules] == ["a://*", "b://*"]
    assert parse_rules("") == () == parse_rules("  ;  ")


@pytest.mark.parametrize(("bad", "token"), [
    ("http://x: boom", "boom"),
    ("http://x error", "http://x error"),
    ("http://x: latency 5", "5"),
    ("http://x: latency", "http://x: latency"),
    ("http://x: latency 200ms-50ms", "200ms-50ms"),
    ("http://x: status 999", "999"),
    ("http://x: status", "http://x: status"),
    ("http://x kind=cache: error", "kind=cache"),
    ("http://x color=red: error", "color=red"),
    ("http://x: error 130%", "130%"),
    ("http://x: error p=2", "p=2"),
    ("http://x: error first=three", "first=three"),
    ("http://x: reset retry-after=1s", "retry-after=1s"),
    ("http://x: status 503 retry-after=soon", "retry-after=soon"),
    ("server:/x: error", "error"),
    (": error", ": error"),
])
def test_bad_rules_name_the_rule_and_the_token(bad: str, token: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules("ok://*: error; " + bad)
    message = str(info.value)
    assert message.startswith("INSTRUMENT_FAULTS=")
    assert f"rule 2 {bad.strip()!r}" in message
    assert f"token {token!r}" in message
    assert "accepted:" in message
    assert info.value.variable == "INSTRUMENT_FAULTS"


class _Settings:
    def __init__(self, faults: str, seed: int | None = None, header: bool = False) -> None:
        self.faults = faults
        self.faults_seed = seed
        self.faults_header = header


def test_validate_settings_installs_env_rules_and_bumps_generation() -> None:
    from instrument import _context

    before = _context.generation.value
    validate_settings(_Settings("redis://*: timeout 1s", seed=3, header=True))
    assert _context.generation.value > before
    assert instrument.faults.active_rules() == parse_rules("redis://*: timeout 1s")
    assert _registry.header_enabled[0] is True
    validate_settings(_Settings(""))
    assert instrument.faults.active_rules() == ()
    assert _registry.header_enabled[0] is False


def test_validate_settings_rejects_bad_rules_and_keeps_the_old_ones() -> None:
    validate_settings(_Settings("redis://*: reset"))
    with pytest.raises(ConfigError, match=r"rule 1 'redis://\*: explode', token 'explode'"):
        validate_settings(_Settings("redis://*: explode"))
    assert [r.fault for r in instrument.faults.active_rules()] == ["reset"]


def test_settings_from_env_reports_the_fault_variable() -> None:
    settings_mod = pytest.importorskip("instrument._settings")
    try:
        import integrations  # noqa: F401 - Settings.from_env validates integration names against it
    except ImportError:
        pytest.skip("integrations registry not importable yet")
    with pytest.raises(ConfigError, match="INSTRUMENT_FAULTS="):
        settings_mod.Settings.from_env({"INSTRUMENT_FAULTS": "http://*: status 1000"})


def test_rule_constructor_validates() -> None:
    with pytest.raises(ValueError, match="fault must be"):
        Rule("*", "explode")
    with pytest.raises(ValueError, match="probability"):
        Rule("*", "error", probability=1.5)
    with pytest.raises(ValueError, match="status code"):
        Rule("*", "status")


@given(st.floats(min_value=0, max_value=10_000, allow_nan=False), st.sampled_from(["us", "ms", "s", "m"]))
def test_durations(value: float, unit: str) -> None:
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]
    assert parse_duration(f"{value:.6f}{unit}") == pytest.approx(round(value, 6) * scale)


@given(st.integers(min_value=0, max_value=100))
def test_percentages(pct: int) -> None:
    (rule,) = parse_rules(f"*: error {pct}%")
    assert rule.probability == pytest.approx(pct / 100)
