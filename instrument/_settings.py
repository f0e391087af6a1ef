"""Configuration: parsed once from the environment into a frozen :class:`Settings`.

Every variable the toolkit reads is one :class:`Variable` in :data:`VARIABLES`; that table feeds
``instrument config`` and the README's configuration table (a test keeps them in step). A bad value
raises :class:`~instrument.errors.ConfigError` naming the variable, the value and what is accepted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from instrument.errors import ConfigError

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    default: str
    accepted: str
    doc: str


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, raw, "true/false, 1/0, yes/no, on/off")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(name, raw, ", ".join(choices))
    return value


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0,
            scale: float = 1.0, unit: str = "seconds") -> float:
    """A non-negative number, returned multiplied by ``scale`` (e.g. ms -> s)."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(name, raw, f"a number of {unit} >= {minimum:g}") from None
    if not value >= minimum or value != value or value == float("inf"):
        raise ConfigError(name, raw, f"a number of {unit} >= {minimum:g}")
    return value * scale


def _csv(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "")
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _pairs(env: Mapping[str, str], name: str, *, secret: bool = False) -> dict[str, str]:
    """W3C-baggage-like ``key=value,key2=value2`` (OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS).

    ``secret``: the values are credentials (export headers): an error shows the keys, never a value.
    """
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for i, part in enumerate(_csv(env, name), 1):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            if secret:
                shown = ",".join(p.partition("=")[0] + "=REDACTED" if "=" in p else "REDACTED" for p in _csv(env, name))
                raise ConfigError(name, shown, "comma-separated key=value pairs",
                                  detail=f"pair {i} has no '=' or no key")
            raise ConfigError(name, env.get(name), "comma-separated key=value pairs", detail=f"bad pair {part!r}")
        out[unquote(key.strip())] = unquote(value.strip())
    return out


_EXPORTERS = ("otlp", "console", "none")
_PROTOCOLS = ("grpc", "http/protobuf")
_SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
             "parentbased_always_off", "parentbased_traceidratio")
_PROPAGATORS = ("tracecontext", "baggage", "b3", "b3multi", "jaeger", "none")
_SIGNALS = ("traces", "metrics", "logs")


@dataclass(frozen=True, slots=True)
class Exporter:
    """Where one signal goes."""

    kind: str  # "otlp" | "console" | "none"
    protocol: str = "grpc"
    endpoint: str | None = None  # None: the exporter's own default
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 10.0  # seconds


@dataclass(frozen=True, slots=True)
class Settings:
    """The toolkit's whole configuration. Build it with :meth:`from_env`; tests pass a dict."""

    enabled: bool = True
    sdk_disabled: bool = False
    service_name: str = "unknown_service"
    service_version: str | None = None
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    traces: Exporter = Exporter("otlp")
    metrics: Exporter = Exporter("otlp")
    logs: Exporter = Exporter("otlp")
    sampler: str = "parentbased_always_on"
    sampler_arg: float | None = None
    propagators: tuple[str, ...] = ("tracecontext", "baggage")
    metric_export_interval: float = 60.0
    metrics_temporality: str = "cumulative"
    exemplar_filter: str = "trace_based"
    integrations: tuple[str, ...] = ()  # empty: all
    disabled_integrations: frozenset[str] = frozenset()
    log_level: str = "info"
    log_format: str = "auto"
    slow_call_threshold: float = 1.0
    shutdown_timeout: float = 2.0
    # Subsystem specs, validated by their own parsers at init (instrument.policies, instrument.faults ...).
    policies: str = ""
    policies_file: str | None = None
    faults: str = ""
    faults_seed: int | None = None
    faults_header: bool = False
    redact_query_keys: tuple[str, ...] = ()
    capture_request_headers: tuple[str, ...] = ()
    capture_response_headers: tuple[str, ...] = ()
    excluded_urls: tuple[str, ...] = ()
    capture_sql_parameters: bool = False
    db_pool: str = ""
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)  # variable -> "env" | "default"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse every variable once. Raises ConfigError on the first bad value."""
        env = os.environ if env is None else env
        sdk_disabled = _flag(env, "OTEL_SDK_DISABLED", False)
        resource = _pairs(env, "OTEL_RESOURCE_ATTRIBUTES")
        service_name = (env.get("OTEL_SERVICE_NAME") or "").strip() or resource.get("service.name") or "unknown_service"
        sampler = _choice(env, "OTEL_TRACES_SAMPLER", "parentbased_always_on", _SAMPLERS)
        sampler_arg = None
        if env.get("OTEL_TRACES_SAMPLER_ARG", "").strip():
            sampler_arg = _number(env, "OTEL_TRACES_SAMPLER_ARG", 1.0, unit="probability")
            if sampler_arg > 1.0:
                raise ConfigError("OTEL_TRACES_SAMPLER_ARG", env["OTEL_TRACES_SAMPLER_ARG"], "a probability in [0, 1]")
        propagators = _csv(env, "OTEL_PROPAGATORS") or ("tracecontext", "baggage")
        for name in propagators:
            if name not in _PROPAGATORS:
                raise ConfigError("OTEL_PROPAGATORS", env["OTEL_PROPAGATORS"], ", ".join(_PROPAGATORS),
                                  detail=f"unknown propagator {name!r}")
        integrations = _csv(env, "INSTRUMENT_INTEGRATIONS")
        disabled = frozenset(_csv(env, "INSTRUMENT_DISABLED_INTEGRATIONS"))
        from instrument.integrations import REGISTRY  # the toolkit's own table, no client library imported

        for var, names in (("INSTRUMENT_INTEGRATIONS", integrations), ("INSTRUMENT_DISABLED_INTEGRATIONS", disabled)):
            for name in names:
                if name not in REGISTRY and name != "all":
                    raise ConfigError(var, env[var], ", ".join(sorted(REGISTRY)), detail=f"unknown integration {name!r}")
        seed_raw = env.get("INSTRUMENT_FAULTS_SEED", "").strip()
        try:
            seed = int(seed_raw) if seed_raw else None
        except ValueError:
            raise ConfigError("INSTRUMENT_FAULTS_SEED", seed_raw, "an integer") from None
        settings = cls(
            enabled=_flag(env, "INSTRUMENT_ENABLED", True),
            sdk_disabled=sdk_disabled,
            service_name=service_name,
            service_version=(env.get("INSTRUMENT_SERVICE_VERSION") or resource.get("service.version") or None),
            resource_attributes=resource,
            traces=_exporter(env, "traces", "OTEL_TRACES_EXPORTER"),
            metrics=_exporter(env, "metrics", "OTEL_METRICS_EXPORTER"),
            logs=_exporter(env, "logs", "OTEL_LOGS_EXPORTER"),
            sampler=sampler,
            sampler_arg=sampler_arg,
            propagators=tuple(p for p in propagators if p != "none"),
            metric_export_interval=_number(env, "OTEL_METRIC_EXPORT_INTERVAL", 60.0, minimum=1, scale=0.001,
                                           unit="milliseconds") if env.get("OTEL_METRIC_EXPORT_INTERVAL") else 60.0,
            metrics_temporality=_choice(env, "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "cumulative",
                                        ("cumulative", "delta", "lowmemory")),
            exemplar_filter=_choice(env, "OTEL_METRICS_EXEMPLAR_FILTER", "trace_based",
                                    ("trace_based", "always_on", "always_off")),
            integrations=integrations if "all" not in integrations else (),
            disabled_integrations=disabled,
            log_level=_choice(env, "INSTRUMENT_LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")),
            log_format=_choice(env, "INSTRUMENT_LOG_FORMAT", "auto", ("auto", "json", "console")),
            slow_call_threshold=_number(env, "INSTRUMENT_SLOW_CALL_THRESHOLD", 1.0),
            shutdown_timeout=_number(env, "INSTRUMENT_SHUTDOWN_TIMEOUT", 2.0),
            policies=env.get("INSTRUMENT_POLICIES", ""),
            policies_file=env.get("INSTRUMENT_POLICIES_FILE") or None,
            faults=env.get("INSTRUMENT_FAULTS", ""),
            faults_seed=seed,
            faults_header=_flag(env, "INSTRUMENT_FAULTS_HEADER_ENABLED", False),
            redact_query_keys=tuple(k.lower() for k in _csv(env, "INSTRUMENT_REDACT_QUERY_KEYS")),
            capture_request_headers=tuple(h.lower() for h in _csv(env, "INSTRUMENT_CAPTURE_REQUEST_HEADERS")),
            capture_response_headers=tuple(h.lower() for h in _csv(env, "INSTRUMENT_CAPTURE_RESPONSE_HEADERS")),
            excluded_urls=_patterns(env, "INSTRUMENT_EXCLUDED_URLS"),
            capture_sql_parameters=_flag(env, "INSTRUMENT_CAPTURE_SQL_PARAMETERS", False),
            db_pool=env.get("INSTRUMENT_DB_POOL", ""),
            sources={v.name: ("env" if env.get(v.name, "").strip() else "default") for v in VARIABLES},
        )
        _validate_subsystems(settings)
        return settings


_active: list[Settings] = []


def active() -> Settings:
    """The settings init() was given (defaults before init)."""
    if not _active:
        _active.append(Settings())
    return _active[0]


def set_active(settings: Settings) -> None:
    _active[:] = [settings]


def _patterns(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    patterns = _csv(env, name)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(name, env[name], "comma-separated regular expressions",
                              detail=f"{pattern!r}: {exc}") from None
    return patterns


def _exporter(env: Mapping[str, str], signal: str, kind_var: str) -> Exporter:
    kind = _choice(env, kind_var, "otlp", _EXPORTERS)
    upper = signal.upper()
    protocol = _choice(env, f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL",
                       _choice(env, "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", _PROTOCOLS), _PROTOCOLS)
    endpoint = (env.get(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT") or "").strip() or None
    if endpoint is None:
        base = (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip() or None
        if base is not None:
            _check_url("OTEL_EXPORTER_OTLP_ENDPOINT", base)
            # The per-signal path is appended only for http/protobuf (OTLP exporter spec).
            endpoint = base.rstrip("/") + f"/v1/{signal}" if protocol == "http/protobuf" else base
    else:
        _check_url(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT", endpoint)
    headers = {**_pairs(env, "OTEL_EXPORTER_OTLP_HEADERS", secret=True),
               **_pairs(env, f"OTEL_EXPORTER_OTLP_{upper}_HEADERS", secret=True)}
    timeout_var = f"OTEL_EXPORTER_OTLP_{upper}_TIMEOUT"
    if not env.get(timeout_var, "").strip():
        timeout_var = "OTEL_EXPORTER_OTLP_TIMEOUT"
    timeout = _number(env, timeout_var, 10.0, scale=0.001, unit="milliseconds") if env.get(timeout_var, "").strip() \
        else 10.0
    return Exporter(kind, protocol, endpoint, headers, timeout)


def _check_url(name: str, value: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(name, value, "a URL such as http://localhost:4317") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(name, value, "a URL such as http://localhost:4317")


# Subsystems' validators: (settings) -> None, raising ConfigError, and installing the rules. A subsystem
# with nothing configured is not even imported (start-up time); once loaded, it is always told, so that
# rules from earlier settings are replaced.
VALIDATORS: list[tuple[str, Callable[[Settings], Any]]] = [
    ("instrument.policies:validate_settings", lambda s: s.policies or s.policies_file),
    ("instrument.faults:validate_settings", lambda s: s.faults or s.faults_header),
    ("instrument.pool:validate_settings", lambda s: s.db_pool),
]


def _validate_subsystems(settings: Settings) -> None:
    import importlib
    import sys

    for spec, configured in VALIDATORS:
        module_name, _, attr = spec.partition(":")
        if module_name not in sys.modules and not configured(settings):
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        validate: Callable[[Settings], Any] | None = getattr(module, attr, None)
        if validate is not None:
            validate(settings)


VARIABLES: tuple[Variable, ...] = (
    Variable("OTEL_SDK_DISABLED", "false", "true/false", "No telemetry SDK is installed: spans, metrics and logs are no-ops; policies and faults still apply."),
    Variable("OTEL_SERVICE_NAME", "unknown_service", "any string", "service.name of the resource."),
    Variable("OTEL_RESOURCE_ATTRIBUTES", "", "key=value,...", "Extra resource attributes."),
    Variable("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317 (grpc), http://localhost:4318 (http)",
             "URL", "Collector endpoint for all signals; /v1/<signal> is appended for http/protobuf."),
    Variable("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "grpc, http/protobuf", "OTLP transport for all signals."),
    Variable("OTEL_EXPORTER_OTLP_HEADERS", "", "key=value,...", "Headers sent with every export."),
    Variable("OTEL_EXPORTER_OTLP_TIMEOUT", "10000", "milliseconds", "Export timeout."),
    Variable("OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_{ENDPOINT,PROTOCOL,HEADERS,TIMEOUT}", "(the general one)",
             "as above", "Per-signal overrides; a per-signal endpoint is used as is."),
    Variable("OTEL_TRACES_EXPORTER", "otlp", "otlp, console, none", "Where spans go."),
    Variable("OTEL_METRICS_EXPORTER", "otlp", "otlp, console, none", "Where metrics go."),
    Variable("OTEL_LOGS_EXPORTER", "otlp", "otlp, console, none", "Where log records go."),
    Variable("OTEL_TRACES_SAMPLER", "parentbased_always_on", ", ".join(_SAMPLERS), "Trace sampler."),
    Variable("OTEL_TRACES_SAMPLER_ARG", "1.0", "probability in [0, 1]", "Ratio for the traceidratio samplers."),
    Variable("OTEL_PROPAGATORS", "tracecontext,baggage", ", ".join(_PROPAGATORS), "Context propagation formats."),
    Variable("OTEL_METRIC_EXPORT_INTERVAL", "60000", "milliseconds >= 1", "How often metrics are exported."),
    Variable("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "cumulative", "cumulative, delta, lowmemory",
             "Temporality of exported counters and histograms (up-down counters stay cumulative)."),
    Variable("OTEL_METRICS_EXEMPLAR_FILTER", "trace_based", "trace_based, always_on, always_off",
             "Which measurements may become exemplars: those in a sampled trace, all, or none."),
    Variable("INSTRUMENT_ENABLED", "true", "true/false", "Master switch: false patches nothing."),
    Variable("INSTRUMENT_SERVICE_VERSION", "", "any string", "service.version of the resource."),
    Variable("INSTRUMENT_INTEGRATIONS", "all", "comma-separated integration names, or all",
             "Only these integrations are patched."),
    Variable("INSTRUMENT_DISABLED_INTEGRATIONS", "", "comma-separated integration names",
             "These integrations are not patched."),
    Variable("INSTRUMENT_LOG_LEVEL", "info", "debug, info, warning, error, critical", "Level of the toolkit's logs."),
    Variable("INSTRUMENT_LOG_FORMAT", "auto", "auto, json, console",
             "auto: console renderer on a TTY, JSON otherwise."),
    Variable("INSTRUMENT_SLOW_CALL_THRESHOLD", "1.0", "seconds", "A call slower than this is logged."),
    Variable("INSTRUMENT_SHUTDOWN_TIMEOUT", "2.0", "seconds", "Longest time shutdown() spends flushing."),
    Variable("INSTRUMENT_POLICIES", "", "policy rules (see Resilience policies)", "Resilience policies per target."),
    Variable("INSTRUMENT_POLICIES_FILE", "", "path to a TOML file", "Policy rules from a file."),
    Variable("INSTRUMENT_FAULTS", "", "fault rules (see Fault injection)", "Faults to inject per target."),
    Variable("INSTRUMENT_FAULTS_SEED", "", "integer", "Seed for reproducible fault sampling."),
    Variable("INSTRUMENT_FAULTS_HEADER_ENABLED", "false", "true/false",
             "Let request headers (x-instrument-fault-*) inject server-side faults. Off: any caller could degrade you."),
    Variable("INSTRUMENT_REDACT_QUERY_KEYS", "", "comma-separated query keys",
             "Extra URL query keys whose values are redacted (on top of the built-in list)."),
    Variable("INSTRUMENT_CAPTURE_REQUEST_HEADERS", "", "comma-separated header names",
             "Request headers recorded on HTTP spans (sensitive ones stay redacted)."),
    Variable("INSTRUMENT_CAPTURE_RESPONSE_HEADERS", "", "comma-separated header names",
             "Response headers recorded on HTTP spans (sensitive ones stay redacted)."),
    Variable("INSTRUMENT_EXCLUDED_URLS", "", "comma-separated regular expressions",
             "HTTP URLs matching any pattern are not instrumented."),
    Variable("INSTRUMENT_DB_POOL", "", "driver(option=value,...);driver",
             "Pool connect() of the named drivers (psycopg2, pymysql) with instrument.pool (see Databases)."),
    Variable("INSTRUMENT_CAPTURE_SQL_PARAMETERS", "false", "true/false",
             "Record SQL parameter values (db.query.parameter.*). Off by default: they may hold secrets."),
)
