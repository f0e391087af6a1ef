"""What every HTTP client integration shares: URL redaction, method names, header capture, exclusion.

All of it is computed once per distinct URL or header name and cached (bounded), since the same
URLs come back call after call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit

from instrument import _settings

REDACTED = "REDACTED"
# The semconv list, then common secrets. INSTRUMENT_REDACT_QUERY_KEYS adds more.
SENSITIVE_QUERY_KEYS = frozenset(k.lower() for k in (
    "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "AWSAccessKeyId", "Signature", "sig",
    "X-Goog-Signature", "token", "access_token", "refresh_token", "id_token", "api_key", "apikey", "api-key",
    "key", "password", "passwd", "secret", "client_secret", "auth", "session", "sessionid", "code"))
SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
                               "x-auth-token", "x-amz-security-token"})
KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
IDEMPOTENCY_HEADERS = ("idempotency-key", "x-idempotency-key")

_CACHE_MAX = 2048
_redacted: dict[str, str] = {}
_redacted_for: list[Any] = [None]


def method_name(method: str | bytes) -> str:
    """``http.request.method``: the upper-case method, or ``_OTHER`` for unknown ones."""
    if isinstance(method, bytes):
        method = method.decode("latin-1")
    upper = method.upper()
    return upper if upper in KNOWN_METHODS else "_OTHER"


def is_idempotent(method: str, headers: Mapping[str, Any] | None) -> bool:
    """Safe to retry: an idempotent method, or any method carrying an idempotency key."""
    if method in IDEMPOTENT_METHODS:
        return True
    if headers:
        try:
            return any(h in headers for h in IDEMPOTENCY_HEADERS) or any(
                str(k).lower() in IDEMPOTENCY_HEADERS for k in headers)
        except Exception:  # noqa: BLE001 - odd header containers: be conservative
            return False
    return False


def _sensitive_keys() -> frozenset[str]:
    extra = _settings.active().redact_query_keys
    return SENSITIVE_QUERY_KEYS | frozenset(extra) if extra else SENSITIVE_QUERY_KEYS


def redact_url(url: str) -> str:
    """``url.full`` without secrets: userinfo becomes REDACTED:REDACTED, sensitive query values REDACTED."""
    extra = _settings.active().redact_query_keys
    if extra is not _redacted_for[0]:  # the key list changed (tests, re-init): forget old results
        _redacted.clear()
        _redacted_for[0] = extra
    cached = _redacted.get(url)
    if cached is not None:
        return cached
    result = _redact(url)
    if len(_redacted) >= _CACHE_MAX:
        _redacted.clear()
    _redacted[url] = result
    return result


def _redact(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "REDACTED:REDACTED@" + netloc.rpartition("@")[2]
    query = redact_query(parts.query)
    # The fragment is never sent to the server; drop it (it can hold OAuth tokens).
    return SplitResult(parts.scheme, netloc, parts.path, query, "").geturl()


_scrubbers: dict[frozenset[str], re.Pattern[str]] = {}
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"<>]+@")


def scrub(text: str) -> str:
    """Free text (an exception message, a stack trace) with URL secrets redacted as in ``url.full``.

    Clients put the request URL in their error messages (urllib3's ``Max retries exceeded with url:
    /x?token=...``, and requests' wrapping of it); span status descriptions, exception events and log
    lines carry those messages, so they go through this first.
    """
    if "=" not in text and "@" not in text:
        return text
    keys = _sensitive_keys()
    pattern = _scrubbers.get(keys)
    if pattern is None:
        alternatives = "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))
        pattern = re.compile(rf"(?i)([?&;](?:{alternatives})=)[^&\s'\"<>#)]*")
        if len(_scrubbers) > 8:
            _scrubbers.clear()
        _scrubbers[keys] = pattern
    return _USERINFO.sub(r"\1REDACTED:REDACTED@", pattern.sub(rf"\g<1>{REDACTED}", text))


def redact_query(query: str) -> str:
    """A raw query string with the values of sensitive keys replaced by REDACTED (``url.query``)."""
    if not query:
        return query
    keys = _sensitive_keys()
    pieces = []
    for piece in query.split("&"):
        key, sep, _value = piece.partition("=")
        if sep and _unquote_lower(key) in keys:
            piece = f"{key}={REDACTED}"
        pieces.append(piece)
    return "&".join(pieces)


def origin(scheme: str, host: str, port: int | None) -> tuple[str, str, int]:
    """(target, host, port) for a client that already knows its origin: ``http://host:port``.

    IPv6 literals get their brackets back in the target; the port defaults by scheme.
    """
    scheme = scheme or "http"
    if port is None:
        port = 443 if scheme in ("https", "wss") else 80
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{scheme}://{shown}:{port}", host.strip("[]"), port


def client_endpoint(client: str, target: str, host: str, port: int, *, errors: Any, status_of: Any,
                    apply_deadline: Any) -> Any:
    """The :class:`~instrument._call.Endpoint` of one HTTP client library for one origin (cached)."""
    from instrument._call import endpoint

    return endpoint("http", "http", target, server_address=host, server_port=port, errors=errors,
                    status_of=status_of, apply_deadline=apply_deadline, client=client)


_MISSING = object()
_url_full: dict[str, str | None] = {}
_url_full_for: list[Any] = [None]


def remember(cache: dict[Any, Any], key: Any, build: Any, arg: Any, limit: int = 2048) -> Any:
    """``cache[key]``, made by ``build(arg)`` on a miss; the cache is emptied when it reaches ``limit``.

    Callers look the key up themselves first (one dict lookup on the hot path) and call this on a miss.
    """
    found = cache.get(key)
    if found is None:
        found = build(arg)
        if len(cache) >= limit:
            cache.clear()
        cache[key] = found
    return found


def url_full(url: str, settings: Any = None) -> str | None:
    """The redacted ``url.full`` of ``url``, or None when INSTRUMENT_EXCLUDED_URLS excludes it.

    Both answers depend only on the URL and the (frozen) settings, so they are cached per URL for the
    settings object in force: a repeated URL costs one dict lookup.
    """
    if settings is None:
        settings = _settings.active()
    if settings is not _url_full_for[0]:  # re-init or a test's settings: forget old answers
        _url_full.clear()
        _url_full_for[0] = settings
    found = _url_full.get(url, _MISSING)
    if found is _MISSING:
        found = None if is_excluded(url) else redact_url(url)
        if len(_url_full) >= _CACHE_MAX:
            _url_full.clear()
        _url_full[url] = found
    return found  # type: ignore[return-value]


def route(ep: Any, method: str | bytes, url: str, settings: Any) -> tuple[Any, Any, str | None]:
    """What a request's (method, URL) resolves to under ``settings``, for a client to cache per (method, URL):
    the endpoint; the op, or None for a method that is idempotent only with an idempotency key (decided per
    call by :func:`op_of`); and the redacted ``url.full``, or None when INSTRUMENT_EXCLUDED_URLS excludes it."""
    name = method_of(method)
    op = ep.op(name, idempotent=True) if name in IDEMPOTENT_METHODS else None
    return ep, op, url_full(url, settings)


class Routes:
    """A client's cache of :func:`route` results, keyed by (method, URL key), for the settings in force:
    emptied when the settings change (re-init, tests) or when it reaches ``limit``."""

    __slots__ = ("limit", "settings", "table")

    def __init__(self, limit: int = 2048) -> None:
        self.limit = limit
        self.settings: Any = None
        self.table: dict[Any, tuple[Any, Any, str | None]] = {}

    def get(self, key: Any, settings: Any) -> tuple[Any, Any, str | None] | None:
        if settings is not self.settings:
            self.settings, self.table = settings, {}
            return None
        return self.table.get(key)

    def add(self, key: Any, found: tuple[Any, Any, str | None]) -> tuple[Any, Any, str | None]:
        table = self.table
        if len(table) >= self.limit:
            table.clear()
        table[key] = found
        return found


def op_of(ep: Any, method: str | bytes, headers: Any) -> Any:
    """The op of a request whose method is idempotent only with an idempotency key in ``headers``."""
    name = method_of(method)
    return ep.op(name, idempotent=is_idempotent(name, headers))


_METHOD_NAMES: dict[Any, str] = {m: m for m in KNOWN_METHODS}
_METHOD_NAMES.update({m.encode(): m for m in KNOWN_METHODS})


def method_of(method: str | bytes) -> str:
    """:func:`method_name` with the known upper-case spellings (str or bytes) answered by one lookup."""
    return _METHOD_NAMES.get(method) or method_name(method)


def request_attributes(url: str, headers: Any, full: str | None = None, settings: Any = None) -> dict[str, Any]:
    """Per-call CLIENT span attributes: the redacted ``url.full`` and any allow-listed request headers."""
    attributes: dict[str, Any] = {"url.full": redact_url(url) if full is None else full}
    names = (settings or _settings.active()).capture_request_headers
    if names and headers is not None:
        attributes.update(header_attributes("request", names, headers))
    return attributes


def response_capture(settings: Any = None) -> Any:
    """An ``on_result`` callback recording allow-listed response headers, or None when none are listed."""
    return _capture_response if (settings or _settings.active()).capture_response_headers else None


def _capture_response(span: Any, response: Any) -> None:
    if span.is_recording():
        headers = getattr(response, "headers", None)
        if headers is not None:
            span.set_attributes(header_attributes("response", _settings.active().capture_response_headers, headers))


def _unquote_lower(key: str) -> str:
    from urllib.parse import unquote_plus

    return unquote_plus(key).lower()


def host_port(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, with the scheme's default port."""
    parts = urlsplit(url)
    scheme = parts.scheme or "http"
    port = parts.port or (443 if scheme in ("https", "wss") else 80)
    return scheme, parts.hostname or "", port


_excluded: tuple[str, re.Pattern[str] | None] = ("", None)


def is_excluded(url: str) -> bool:
    """True when ``url`` matches INSTRUMENT_EXCLUDED_URLS."""
    global _excluded
    patterns = _settings.active().excluded_urls
    if not patterns:
        return False
    key = "\n".join(patterns)
    if _excluded[0] != key:
        _excluded = (key, re.compile("|".join(f"(?:{p})" for p in patterns)))
    compiled = _excluded[1]
    return compiled is not None and compiled.search(url) is not None


def header_attributes(direction: str, names: Iterable[str], headers: Any) -> dict[str, Any]:
    """``http.{request,response}.header.<name>`` for the allow-listed names, sensitive ones redacted."""
    out: dict[str, Any] = {}
    for name in names:
        try:
            value = headers.get(name)
        except Exception:  # noqa: BLE001
            value = None
        if value is None:
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        out[f"http.{direction}.header.{name}"] = [REDACTED if name in SENSITIVE_HEADERS else str(value)]
    return out


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a Retry-After header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        import datetime as _dt

        when = parsedate_to_datetime(value)
        return max(0.0, (when - _dt.datetime.now(_dt.timezone.utc)).total_seconds())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
