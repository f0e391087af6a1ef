"""Every configuration variable: parsed, and a bad value named in one clear error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from instrument._settings import VARIABLES, Settings
from instrument.errors import ConfigError


def test_defaults():
    s = Settings.from_env({})
    assert s.enabled and not s.sdk_disabled
    assert s.service_name == "unknown_service"
    assert s.traces.kind == s.metrics.kind == s.logs.kind == "otlp"
    assert s.traces.protocol == "grpc" and s.traces.endpoint is None
    assert s.sampler == "parentbased_always_on"
    assert s.propagators == ("tracecontext", "baggage")
    assert s.metric_export_interval == 60.0
    assert s.log_level == "info" and s.log_format == "auto"


def test_every_variable_parses():
    env = {
        "OTEL_SDK_DISABLED": "true",
        "OTEL_SERVICE_NAME": "orders",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=pay%20ments",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=abc",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/custom",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "x=1",
        "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT": "500",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_PROPAGATORS": "tracecontext",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "Delta",
        "OTEL_METRICS_EXEMPLAR_FILTER": "always_off",
        "INSTRUMENT_ENABLED": "yes",
        "INSTRUMENT_SERVICE_VERSION": "1.2.3",
        "INSTRUMENT_INTEGRATIONS": "requests,redis",
        "INSTRUMENT_DISABLED_INTEGRATIONS": "redis",
        "INSTRUMENT_LOG_LEVEL": "DEBUG",
        "INSTRUMENT_LOG_FORMAT": "json",
        "INSTRUMENT_SLOW_CALL_THRESHOLD": "0.5",
        "INSTRUMENT_SHUTDOWN_TIMEOUT": "1",
        "INSTRUMENT_REDACT_QUERY_KEYS": "session_key,Sig2",
        "INSTRUMENT_CAPTURE_REQUEST_HEADERS": "X-Request-Id",
        "INSTRUMENT_CAPTURE_RESPONSE_HEADERS": "content-type",
        "INSTRUMENT_EXCLUDED_URLS": "/health$,^https?://metadata",
        "INSTRUMENT_CAPTURE_SQL_PARAMETERS": "on",
        "INSTRUMENT_FAULTS_SEED": "42",
        "INSTRUMENT_FAULTS_HEADER_ENABLED": "1",
    }
    s = Settings.from_env(env)
    assert s.sdk_disabled is True
    assert s.service_name == "orders" and s.service_version == "1.2.3"
    assert s.resource_attributes == {"deployment.environment": "prod", "team": "pay ments"}
    assert s.traces.kind == "console" and s.traces.endpoint == "http://traces:4318/custom"
    assert s.metrics.protocol == "grpc" and s.metrics.endpoint == "http://collector:4318"
    assert s.logs.kind == "none" and s.logs.endpoint == "http://collector:4318/v1/logs"
    assert s.logs.headers == {"api-key": "abc", "x": "1"} and s.logs.timeout == 0.5
    assert s.traces.timeout == 2.5
    assert s.sampler == "parentbased_traceidratio" and s.sampler_arg == 0.25
    assert s.propagators == ("tracecontext",)
    assert s.metric_export_interval == 5.0
    assert s.metrics_temporality == "delta" and s.exemplar_filter == "always_off"
    assert s.integrations == ("requests", "redis") and s.disabled_integrations == {"redis"}
    assert s.log_level == "debug" and s.log_format == "json"
    assert s.slow_call_threshold == 0.5 and s.shutdown_timeout == 1.0
    assert s.redact_query_keys == ("session_key", "sig2")
    assert s.capture_request_headers == ("x-request-id",)
    assert s.capture_response_headers == ("content-type",)
    assert s.excluded_urls == ("/health$", "^https?://metadata")
    assert s.capture_sql_parameters is True
    assert s.faults_seed == 42 and s.faults_header is True
    assert s.sources["OTEL_SERVICE_NAME"] == "env" and s.sources["INSTRUMENT_POLICIES"] == "default"


def test_service_name_from_resource_attributes():
    assert Settings.from_env({"OTEL_RESOURCE_ATTRIBUTES": "service.name=billing"}).service_name == "billing"


BAD = [
    ("OTEL_SDK_DISABLED", "maybe"),
    ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://host:notaport"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=S3CRET,broken"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://x"),
    ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "udp"),
    ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "-1"),
    ("OTEL_TRACES_EXPORTER", "zipkin"),
    ("OTEL_METRICS_EXPORTER", "prometheus"),
    ("OTEL_LOGS_EXPORTER", "file"),
    ("OTEL_TRACES_SAMPLER", "sometimes"),
    ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
    ("OTEL_PROPAGATORS", "tracecontext,xray"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
    ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "sometimes"),
    ("OTEL_METRICS_EXEMPLAR_FILTER", "trace"),
    ("INSTRUMENT_ENABLED", "2"),
    ("INSTRUMENT_INTEGRATIONS", "requests,mongo"),
    ("INSTRUMENT_DISABLED_INTEGRATIONS", "kafka"),
    ("INSTRUMENT_LOG_LEVEL", "loud"),
    ("INSTRUMENT_LOG_FORMAT", "xml"),
    ("INSTRUMENT_SLOW_CALL_THRESHOLD", "fast"),
    ("INSTRUMENT_SHUTDOWN_TIMEOUT", "nan"),
    ("INSTRUMENT_EXCLUDED_URLS", "(unclosed"),
    ("INSTRUMENT_CAPTURE_SQL_PARAMETERS", "sometimes"),
    ("INSTRUMENT_DB_POOL", "psycopg2(size=1)"),
    ("INSTRUMENT_FAULTS_SEED", "abc"),
    ("INSTRUMENT_FAULTS_HEADER_ENABLED", "enabled"),
    ("INSTRUMENT_POLICIES", "this is not a rule"),
    ("INSTRUMENT_FAULTS", "this is not a rule"),
    ("INSTRUMENT_POLICIES_FILE", "/nonexistent/policies.toml"),
]


@pytest.mark.parametrize(("variable", "value"), BAD, ids=[f"{v}={x}" for v, x in BAD])
def test_bad_value_names_variable_value_and_accepted(variable, value):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    message = str(info.value)
    assert info.value.variable == variable, message
    assert variable in message and "accepted" in message
    if variable.endswith("_HEADERS"):  # credentials: the keys are shown, never a value
        assert "S3CRET" not in message and "api-key=REDACTED" in message
    else:
        assert repr(value) in message
    assert "\n" not in message


def test_every_documented_variable_has_a_bad_value_case():
    """Each variable in the table is covered above (the per-signal row stands for its family)."""
    covered = {v for v, _ in BAD} | {"OTEL_SERVICE_NAME", "INSTRUMENT_SERVICE_VERSION",
                                     "INSTRUMENT_REDACT_QUERY_KEYS", "INSTRUMENT_CAPTURE_REQUEST_HEADERS",
                                     "INSTRUMENT_CAPTURE_RESPONSE_HEADERS"}  # free text: no bad value exists
    names = {v.name for v in VARIABLES if "{" not in v.name}
    assert names <= covered, names - covered


def test_readme_table_lists_every_variable():
    readme = (os.path.join(os.path.dirname(__file__), "..", "..", "README.md"))
    text = open(readme, encoding="utf-8").read()
    missing = [v.name for v in VARIABLES if f"`{v.name}`" not in text]
    assert not missing, f"README configuration table lacks {missing}"


def test_instrument_run_with_bad_value_exits_2_with_one_line():
    instrument = os.path.join(os.path.dirname(sys.executable), "instrument")
    env = {**os.environ, "OTEL_TRACES_SAMPLER": "sometimes"}
    result = subprocess.run([instrument, "run", "--", sys.executable, "-c", "print('ran')"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "OTEL_TRACES_SAMPLER" in lines[0] and "'sometimes'" in lines[0] and "always_on" in lines[0]


def test_instrument_config_shows_sources():
    instrument = os.path.join(os.path.dirname(sys.executable), "instrument")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    env["OTEL_SERVICE_NAME"] = "orders"
    env["OTEL_EXPORTER_OTLP_HEADERS"] = "api-key=secret"
    result = subprocess.run([instrument, "config"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("OTEL_SERVICE_NAME"))
    assert "orders" in line and "(env)" in line
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("OTEL_TRACES_SAMPLER "))
    assert "(default)" in line
    assert "secret" not in result.stdout


def test_instrument_doctor_reports_endpoint_and_libraries(receiver):
    instrument = os.path.join(os.path.dirname(sys.executable), "instrument")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    env.update(receiver.env("grpc"), INSTRUMENT_DISABLED_INTEGRATIONS="urllib3")
    result = subprocess.run([instrument, "doctor"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"127.0.0.1:{receiver.grpc_port}: ok" in result.stdout
    assert any(ln.split() == ["requests", "will", "be", "patched"] for ln in result.stdout.splitlines())
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:1"
    result = subprocess.run([instrument, "doctor"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "NOT REACHABLE" in result.stdout
