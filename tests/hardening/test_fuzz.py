"""Hostile input: every INSTRUMENT_*/OTEL_* variable, the policy and fault rule grammars, and the URL and
SQL sanitisers, fuzzed with hypothesis. Only a correct result or ConfigError (naming the variable) comes
out, never another exception, and never a secret in the output or the error message.
"""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from instrument import _http, _settings
from instrument.errors import ConfigError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _variable_names() -> list[str]:
    names: list[str] = []
    for var in _settings.VARIABLES:
        m = re.match(r"^(.*)\{(.*)\}_\{(.*)\}$", var.name)
        if m:
            names += [f"{m[1]}{a}_{b}" for a in m[2].split(",") for b in m[3].split(",")]
        else:
            names.append(var.name)
    return names


NAMES = _variable_names()
PLAUSIBLE = st.sampled_from([
    "", " ", "true", "false", "1", "0", "yes", "maybe", "-1", "1e309", "nan", "inf", "0.5", "2", "1000",
    "http://localhost:4317", "https://collector:4318/", "localhost:4317", "http://:0", "http://h:99999",
    "grpc", "http/protobuf", "otlp", "console", "none", "jaeger", "tracecontext,baggage", "b3,nope",
    "a=b,c=d", "=x", "k=", ",,,", "%zz=1", "requests", "requests,nope", "all", "(", "[a-", ".*\\.health",
    "http://*=timeout(2s),retry(3)", "*=breaker(window=0)", "http://*=latency(100ms)", "*=error(500,rate=2)",
    "/nonexistent/policies.toml", "debug", "json", "\x00", "é", "🙂",
])
VALUES = st.one_of(PLAUSIBLE, st.text(max_size=40), st.from_regex(r"[a-z_]{1,8}\(([a-z]+=)?[0-9.]{0,4}(ms|s|%)?\)",
                                                                    fullmatch=True))


@pytest.fixture(autouse=True)
def _restore_rules():
    yield
    _settings._validate_subsystems(_settings.active())  # from_env installs rules: put the real ones back


@FUZZ
@given(st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=6))
def test_settings_from_env_only_config_error_or_success(env):
    try:
        result = _settings.Settings.from_env(env)
    except ConfigError as exc:
        assert exc.variable, exc
        assert str(exc).startswith(exc.variable), str(exc)
        assert "accepted" in str(exc)
        return
    assert isinstance(result, _settings.Settings)


SECRET = st.text(alphabet=string.ascii_letters + string.digits, min_size=12, max_size=20).map(lambda s: "S3CR3T" + s)


@FUZZ
@given(SECRET, st.sampled_from(["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"]),
       st.sampled_from(["broken", "=nokey", " , x"]))
def test_a_bad_headers_variable_does_not_echo_secrets(secret, name, bad):
    try:
        _settings.Settings.from_env({name: f"x-api-key={secret},{bad}"})
    except ConfigError as exc:
        assert secret not in str(exc)
        assert secret not in repr(exc.value)


@FUZZ
@given(st.text(max_size=120))
@example("http://*=timeout(2s),retry(3,base=100ms),breaker(failure_rate=50%,window=20)")
@example("a=b(;c=d")
@example("*=retry(attempts=1e400)")
def test_policy_grammar_only_config_error_or_rules(text):
    from instrument.policies import _config

    try:
        rules = _config.parse(text)
    except ConfigError as exc:
        assert exc.variable == "INSTRUMENT_POLICIES"
        return
    for rule in rules:
        for spec in rule.policies if hasattr(rule, "policies") else ():
            assert spec is not None
        rule.build("http://fuzz:1")  # a parsed rule also builds its policy objects


POLICY_TEXT = st.builds(
    lambda glob, policies: f"{glob}={','.join(policies)}",
    st.sampled_from(["*", "http://*", "redis://*:6379", "postgresql://db:5432/*"]),
    st.lists(st.builds(lambda name, args: f"{name}({','.join(args)})",
                       st.sampled_from(["timeout", "retry", "breaker", "bulkhead", "ratelimit", "nope"]),
                       st.lists(st.one_of(st.from_regex(r"[0-9]{1,4}(\.[0-9])?(ms|s|%|/s)?", fullmatch=True),
                                          st.from_regex(r"[a-z_]{1,12}=[0-9]{1,4}(ms|s|%)?", fullmatch=True)),
                                max_size=3)),
             min_size=1, max_size=3))


@FUZZ
@given(POLICY_TEXT)
def test_structured_policy_rules_only_config_error_or_rules(text):
    from instrument.policies import _config

    try:
        rules = _config.parse(text)
    except ConfigError:
        return
    for rule in rules:
        rule.build("http://fuzz:1")


FAULT_TEXT = st.one_of(
    st.text(max_size=120),
    st.builds(lambda glob, kind, args: f"{glob}={kind}({','.join(args)})" if args else f"{glob}={kind}",
              st.sampled_from(["*", "http://*", "redis://*", "postgresql://*"]),
              st.sampled_from(["latency", "error", "reset", "timeout", "blackhole", "status", "nope"]),
              st.lists(st.from_regex(r"([a-z]{1,6}=)?[0-9]{1,4}(\.[0-9]+)?(ms|s|%)?(\.\.[0-9]{1,3}(ms|s))?",
                                     fullmatch=True), max_size=3)),
)


@FUZZ
@given(FAULT_TEXT)
@example("http://payments:*=latency(200ms..2s,rate=10%)")
@example("*=error(500")
def test_fault_grammar_only_config_error_or_rules(text):
    from instrument.faults import parse_rules

    try:
        rules = parse_rules(text)
    except ConfigError as exc:
        assert exc.variable == "INSTRUMENT_FAULTS"
        return
    assert isinstance(rules, tuple)


# -- URL redaction ---------------------------------------------------------------------------------

SENSITIVE = sorted(_http.SENSITIVE_QUERY_KEYS)
PLAIN_KEYS = st.sampled_from(["page", "q", "id", "sort", "limit"])
PLAIN_VALUES = st.text(alphabet=string.ascii_lowercase + string.digits, max_size=8)


@st.composite
def urls_with_secrets(draw):  # type: ignore[no-untyped-def]
    secrets: list[str] = []
    scheme = draw(st.sampled_from(["http", "https"]))
    host = draw(st.sampled_from(["api.example.com", "127.0.0.1", "[::1]", "svc"]))
    port = draw(st.sampled_from(["", ":8080", ":443"]))
    userinfo = ""
    if draw(st.booleans()):
        user, password = draw(SECRET), draw(SECRET)
        secrets.append(password)
        userinfo = f"{user}:{password}@" if draw(st.booleans()) else f"{user}@"
        if ":" not in userinfo:
            secrets.append(user)
    path = draw(st.sampled_from(["", "/", "/v1/items", "/a/b;c"]))
    pairs = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            key = draw(st.sampled_from(SENSITIVE))
            key = draw(st.sampled_from([key, key.upper(), key.replace("_", "%5F")]))
            value = draw(SECRET)
            secrets.append(value)
            pairs.append(f"{key}={value}")
        else:
            pairs.append(f"{draw(PLAIN_KEYS)}={draw(PLAIN_VALUES)}")
    query = ("?" + "&".join(pairs)) if pairs or draw(st.booleans()) else ""
    fragment = ""
    if draw(st.booleans()):
        token = draw(SECRET)
        secrets.append(token)
        fragment = f"#access_token={token}"
    return f"{scheme}://{userinfo}{host}{port}{path}{query}{fragment}", secrets


@FUZZ
@given(urls_with_secrets())
@example(("http://u:S3CR3Tpassword00@h/p?token=S3CR3Tvalue00000&x=1#S3CR3Tfrag000000",
          ["S3CR3Tpassword00", "S3CR3Tvalue00000", "S3CR3Tfrag000000"]))
def test_redact_url_never_lets_a_secret_through(case):
    url, secrets = case
    out = _http.redact_url(url)
    assert isinstance(out, str)
    for secret in secrets:
        assert secret not in out, (url, out)


@FUZZ
@given(st.text(max_size=200))
@example("http://[::1/x?token=1")
@example("http://h:99999999/")
def test_redact_url_never_raises(text):
    out = _http.redact_url(text)
    assert isinstance(out, str)


# -- SQL sanitiser ---------------------------------------------------------------------------------

sql = pytest.importorskip("instrument._sql")

LITERAL_SECRET = st.text(alphabet=string.ascii_letters + string.digits + " -_.,;()*/\\\"`$%", min_size=1, max_size=20)
NUMBER_SECRET = st.integers(min_value=10**7, max_value=10**12)


@st.composite
def statements_with_literals(draw):  # type: ignore[no-untyped-def]
    text = draw(LITERAL_SECRET).replace("'", "''")
    marker = "zq" + draw(st.text(alphabet=string.ascii_lowercase, min_size=8, max_size=8))
    secret = f"{marker}{text}"
    number = draw(NUMBER_SECRET)
    template = draw(st.sampled_from([
        "SELECT * FROM users WHERE name = '{s}' AND id = {n}",
        "INSERT INTO t (a, b) VALUES ('{s}', {n})",
        "UPDATE accounts SET note = E'{s}', balance = -{n} WHERE id IN ({n}, {n}, {n})",
        "select $$ {s} $$, $tag${s}$tag$ from t where x > {n}.5e3",
        "WITH q AS (SELECT '{s}' AS v) SELECT v FROM q WHERE n = {n}",
        "SELECT N'{s}', X'{n}', B'101' FROM dual WHERE a = 0x{n}",
        "DELETE FROM t WHERE a = '{s}",  # unterminated: the rest is swallowed
    ]))
    return template.format(s=secret, n=number), marker, str(number)


@FUZZ
@given(statements_with_literals(), st.sampled_from(["postgresql", "mysql", "sqlite"]))
def test_sql_sanitiser_never_lets_a_literal_through(case, dialect):
    statement, marker, number = case
    out = sql.sanitize(statement, dialect)
    assert marker not in out, (statement, out)
    assert number not in out, (statement, out)
    operation, _collection, text = sql.describe(statement, dialect)
    assert marker not in text and number not in text


@FUZZ
@given(st.text(max_size=200), st.sampled_from(["postgresql", "mysql", "sqlite"]))
@example("SELECT 'unterminated", "postgresql")
@example("/* never closed SELECT 1", "mysql")
def test_sql_sanitiser_never_raises(text, dialect):
    assume(True)
    out = sql.sanitize(text, dialect)
    assert isinstance(out, str)
    sql.describe(text, dialect)


_HEX = st.text("0123456789abcdefABCDEF", min_size=0, max_size=34)


def _hex_id(size: int) -> st.SearchStrategy[str]:  # mostly well-formed (lower-case, zero or not), sometimes not
    return st.one_of(st.text("0123456789abcdef", min_size=size, max_size=size), st.just("0" * size), _HEX)


@FUZZ
@given(version=st.sampled_from(["00", "01", "ff", "0g", "0", "000"]), trace_id=_hex_id(32), span_id=_hex_id(16),
       flags=st.sampled_from(["00", "01", "03", "ff", "1", "zz"]), extra=st.sampled_from(["", "-x", "-", "-01-ab"]),
       pad=st.sampled_from(["", " ", "\t", "  \t"]), state=st.sampled_from([None, "k=v", "k=v,bad", ""]))
@example(version="00", trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331", flags="01",
         extra="", pad="", state=None)
def test_traceparent_extracted_directly_as_the_propagators_do(version, trace_id, span_id, flags, extra, pad,  # type: ignore[no-untyped-def]
                                                             state) -> None:
    from opentelemetry import propagate, trace

    from instrument import _call
    from instrument._otel import _setup_propagators

    _setup_propagators(_settings.Settings.from_env({}))
    headers = {"traceparent": f"{pad}{version}-{trace_id}-{span_id}-{flags}{extra}{pad}"}
    if state is not None:
        headers["tracestate"] = state
    direct = _call.extract(headers, propagate.textmap.default_getter)
    generic = propagate.extract(headers)
    assert trace.get_current_span(direct).get_span_context() == trace.get_current_span(generic).get_span_context()
