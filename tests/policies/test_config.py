"""Rules: compact syntax, TOML, errors naming rule and token, matching, registry, configure, exports."""

from __future__ import annotations

import pytest

import instrument.policies as policies
from instrument import _context
from instrument.errors import ConfigError
from instrument.policies import (Bulkhead, CircuitBreaker, Pipeline, RateLimiter, RedisRateLimiter, Retry, Timeout,
                                 breakers, configure, parse, pipeline, policies_for, validate_settings)


class Ep:
    def __init__(self, target: str) -> None:
        self.target = target


def test_exports_sorted_and_complete() -> None:
    assert policies.__all__ == sorted(policies.__all__)
    for name in ("Pipeline", "CircuitBreaker", "Retry", "Timeout", "Bulkhead", "RateLimiter", "RedisRateLimiter",
                 "policies_for", "validate_settings", "configure", "breakers"):
        assert name in policies.__all__


def test_default_is_no_policy() -> None:
    configure("")
    assert policies_for(Ep("http://anything:80")) == ()


def test_compact_syntax_builds_ordered_policies() -> None:
    configure("http://payments:*=timeout(2s),retry(3,base=100ms,cap=2s,deadline=5s,budget=10%),"
              "breaker(failure_rate=50%,window=20,min_calls=10,wait=30s,probes=2,slow=1s,slow_rate=80%),"
              "bulkhead(8,queue=4,wait=500ms),ratelimit(100/s,burst=20),timeout(500ms);"
              "redis://*=breaker(window=10s)")
    got = policies_for(Ep("http://payments:8080"))
    assert [type(p) for p in got] == [Timeout, Retry, CircuitBreaker, Bulkhead, RateLimiter, Timeout]
    t, r, b, bh, rl, t2 = got
    assert t.seconds == 2 and t2.seconds == 0.5
    assert (r.attempts, r.base, r.cap, r.deadline, r.budget.ratio) == (3, 0.1, 2.0, 5.0, 0.1)
    assert (b.failure_rate, b.window, b.min_calls, b.wait, b.probes, b.slow_call, b.slow_rate) == \
        (0.5, 20, 10, 30.0, 2, 1.0, 0.8)
    assert (bh.max_concurrent, bh.max_queue, bh.max_wait) == (8, 4, 0.5)
    assert (rl.rate, rl.burst) == (100, 20)
    assert b.target == "http://payments:8080"
    (redis_breaker,) = policies_for(Ep("redis://cache:6379/0"))
    assert redis_breaker.window_type == "time" and redis_breaker.window == 10


def test_first_match_wins_and_breakers_are_per_target() -> None:
    configure("http://a:*=retry(2);http://*=breaker")
    assert type(policies_for(Ep("http://a:1"))[0]) is Retry
    b1 = policies_for(Ep("http://b:1"))[0]
    b2 = policies_for(Ep("http://c:1"))[0]
    assert b1 is not b2 and b1 is policies_for(Ep("http://b:1"))[0]  # shared per target identity
    assert sorted(v.target for v in breakers()) == ["http://b:1", "http://c:1"]
    assert {v.state for v in breakers()} == {"closed"}


def test_registry_is_bounded(monkeypatch) -> None:
    from instrument.policies import _config

    monkeypatch.setattr(_config, "REGISTRY_SIZE", 3)
    configure("*=breaker")
    for i in range(10):
        policies_for(Ep(f"t{i}"))
    assert len(list(breakers())) == 3


def test_configure_bumps_generation() -> None:
    before = _context.generation.value
    configure("x=timeout(1s)")
    assert _context.generation.value == before + 1


def test_mapping_and_flags() -> None:
    configure({"h*": "breaker(force_open)", "d": "breaker(disabled),retry(2,unsafe,no_budget)"})
    assert policies_for(Ep("d"))[0].disabled and policies_for(Ep("d"))[1].unsafe
    assert policies_for(Ep("d"))[1].budget is None


@pytest.mark.parametrize(("text", "fragment"), [
    ("http://x=retry(3,bse=1s)", "rule 1 ('http://x'): retry: unknown option 'bse'; did you mean 'base'?"),
    ("a=timeout(1s);b=timeout(2)", "rule 2 ('b'): timeout: seconds='2'"),
    ("a=breaker(failure_rate=150%)", "failure_rate must be in (0, 1]"),
    ("a=breaker(window=1.5s)", "whole seconds"),
    ("a=breaker(on=5xx|oops)", "unknown outcome 'oops'"),
    ("a=retry(3", "missing ')'"),
    ("a=magic", "unknown policy 'magic'"),
    ("=retry", "missing '=' or the pattern"),
    ("a=", "no policies"),
    ("a=ratelimit(fast)", "ratelimit: rate='fast'"),
    ("a=timeout", "timeout needs a duration"),
    ("a=retry(1,2)", "unexpected argument '2'"),
])
def test_errors_name_rule_and_token(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert fragment in str(info.value)
    assert str(info.value).startswith("INSTRUMENT_POLICIES=")


def test_toml_file(tmp_path) -> None:
    path = tmp_path / "policies.toml"
    path.write_text('''
[[rule]]
match = "postgresql://*"
policies = "timeout(2s), retry(3)"

[[rule]]
match = "redis://*"
[rule.breaker]
window = "10s"
failure_rate = "60%"
force_open = false
[rule.ratelimit]
rate = "50/s"
redis = "redis://127.0.0.1:6379/0"
''')

    class S:
        policies = "http://*=timeout(1s)"
        policies_file = str(path)

    validate_settings(S())
    assert [type(p) for p in policies_for(Ep("postgresql://db:5432/x"))] == [Timeout, Retry]
    b, rl = policies_for(Ep("redis://c:6379/0"))
    assert b.failure_rate == 0.6 and isinstance(rl, RedisRateLimiter) and rl.rate == 50
    assert [type(p) for p in policies_for(Ep("http://a:1"))] == [Timeout]  # env rules come first


def test_toml_errors(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[rule]]\nmatch = "x"\n[rule.retry]\nattempts = "many"\n')

    class S:
        policies = ""
        policies_file = str(path)

    with pytest.raises(ConfigError, match=r"INSTRUMENT_POLICIES_FILE=.*rule 1 \('x'\): retry: attempts='many'"):
        validate_settings(S())
    S.policies_file = str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="readable TOML"):
        validate_settings(S())


def test_pipeline_from_text_and_order() -> None:
    p = pipeline("timeout(2s), retry(3), breaker(window=5)", name="svc")
    assert isinstance(p, Pipeline) and [x.name for x in p] == ["timeout", "retry", "circuit_breaker"]
    order: list[str] = []

    class Mark:
        name = "mark"

        def __init__(self, tag: str) -> None:
            self.tag = tag

        def call(self, fn, /, *a, **k):  # type: ignore[no-untyped-def]
            order.append(self.tag)
            return fn(*a, **k)

        async def acall(self, fn, /, *a, **k):  # type: ignore[no-untyped-def]
            order.append(self.tag)
            return await fn(*a, **k)

    assert Pipeline("p", (Mark("outer"), Mark("inner"))).call(lambda x: x + 1, 1) == 2
    assert order == ["outer", "inner"]
    assert Pipeline.empty().call(lambda: 3) == 3


def test_settings_from_env_validates_policies() -> None:
    from instrument._settings import Settings

    with pytest.raises(ConfigError, match="INSTRUMENT_POLICIES"):
        Settings.from_env({"INSTRUMENT_POLICIES": "x=retry(zero)"})
