"""Client scenarios for the differential tests: run as ``python _scenarios.py <name> <plain|instrumented>``.

Each scenario exercises a client's less common paths and returns a JSON-able record of everything
observable: values, exception types and messages, traceback tail frame names, headers the server saw
(minus trace context), connection counts. test_differential.py runs each twice, without and with
``import instrument.auto``, and compares the records.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any

TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


def _exc(exc: BaseException) -> dict[str, Any]:
    frames = traceback.extract_tb(exc.__traceback__)
    # Our wrapper frames sit between the caller and the library; the library's own tail must match.
    tail = [f.name for f in frames if not _ours(f.filename)][-4:]
    cause = exc.__cause__ or exc.__context__
    return {"type": f"{type(exc).__module__}.{type(exc).__qualname__}", "tail": tail,
            "cause": type(cause).__qualname__ if cause is not None else None}


def _ours(filename: str) -> bool:
    if "/wrapt/" in filename:
        return True
    return "site-packages" not in filename and ("/instrument/" in filename or "/integrations/" in filename)


def _record(fn: Any, extra: Any = None) -> Any:
    """``{"ok": value}`` or ``{"raised": {...}}``; ``extra(exc)`` adds attributes of the exception."""
    try:
        return {"ok": fn()}
    except Exception as exc:  # noqa: BLE001 - the record is the point
        raised = _exc(exc)
        if extra is not None:
            raised["extra"] = extra(exc)
        return {"raised": raised}


async def _arecord(coro: Any, extra: Any = None) -> Any:
    try:
        return {"ok": await coro}
    except Exception as exc:  # noqa: BLE001 - the record is the point
        raised = _exc(exc)
        if extra is not None:
            raised["extra"] = extra(exc)
        return {"raised": raised}


def _no_trace(headers: Any) -> Any:
    """Message/request headers minus the trace context we add; only-trace-context becomes absent."""
    if headers is None:
        return None
    kept = {str(k): (v.decode() if isinstance(v, bytes) else v) for k, v in dict(headers).items()
            if str(k).lower() not in TRACE_HEADERS}
    if not kept and any(str(k).lower() in TRACE_HEADERS for k in dict(headers)):
        return None
    return kept


def _strip(value: Any, *names: str) -> Any:
    """Replace per-run names (queues, tables, ports) with placeholders, recursively."""
    if isinstance(value, str):
        for i, n in enumerate(names):
            value = value.replace(n, f"<name{i}>")
        return value
    if isinstance(value, bytes):
        return _strip(value.decode("latin-1"), *names)
    if isinstance(value, dict):
        return {_strip(k, *names): _strip(v, *names) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strip(v, *names) for v in value]
    return value


def _unique(prefix: str) -> str:
    import os
    import time

    return f"{prefix}_{os.getpid()}_{int(time.time() * 1000) % 10**8}"


def _seen(body: dict[str, Any]) -> dict[str, Any]:
    body = dict(body)
    # The trace context is what we add; host carries each run's own upstream port.
    body["headers"] = {k: v for k, v in body["headers"].items() if k not in TRACE_HEADERS and k != "host"}
    return body


# -- requests ----------------------------------------------------------------------------------------

def requests_scenario(upstream: Any, dead: str) -> dict[str, Any]:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    base = upstream.url
    out: dict[str, Any] = {}
    s = requests.Session()
    before = upstream.connections
    out["json"] = _record(lambda: _seen(s.get(base + "/x?a=1", headers={"X-Custom": "v", "User-Agent": "ua"}).json()))
    out["post"] = _record(lambda: _seen(s.post(base + "/p", data=b"body", params={"q": "1"}).json()))
    out["head"] = _record(lambda: (s.head(base + "/").status_code, s.head(base + "/").text))
    for _ in range(3):
        s.get(base + "/again").content  # noqa: B018
    out["reused_connections"] = upstream.connections - before  # one keep-alive socket for all of the above
    out["stream_chunks"] = _record(lambda: list(s.get(base + "/stream", stream=True).iter_content(chunk_size=None)))
    out["stream_lines"] = _record(lambda: [line.decode() for line in s.get(base + "/stream", stream=True).iter_lines()])

    def raw() -> str:
        with s.get(base + "/stream", stream=True) as r:
            return r.raw.read(decode_content=True).decode()

    out["raw"] = _record(raw)

    def redirects() -> Any:
        r = s.get(base + "/redirect/3")
        return [r.status_code, r.url.replace(base, ""), [h.status_code for h in r.history],
                [h.url.replace(base, "") for h in r.history], _seen(r.json())["path"]]

    out["redirects"] = _record(redirects)
    out["no_redirect"] = _record(lambda: (s.get(base + "/redirect/1", allow_redirects=False).status_code,
                                          s.get(base + "/redirect/1", allow_redirects=False).headers["Location"]))
    out["too_many"] = _record(lambda: (setattr(s, "max_redirects", 2), s.get(base + "/redirect/5")))
    s.max_redirects = 30
    s.get(base + "/cookie")
    out["cookies"] = _record(lambda: [dict(s.cookies), _seen(s.get(base + "/after").json())["headers"].get("cookie")])
    out["status_500"] = _record(lambda: s.get(base + "/status/500").status_code)
    out["raise_for_status"] = _record(lambda: s.get(base + "/status/404").raise_for_status())
    out["refused"] = _record(lambda: requests.get(dead, timeout=2))
    out["read_timeout"] = _record(lambda: requests.get(base + "/slow", timeout=0.2))
    retrying = requests.Session()
    retrying.mount("http://", HTTPAdapter(max_retries=Retry(total=2, status_forcelist=[503], backoff_factor=0,
                                                            allowed_methods=None)))
    hits = upstream.hits("/status/503")
    out["urllib3_retries"] = _record(lambda: retrying.get(base + "/status/503"))
    out["urllib3_retry_hits"] = upstream.hits("/status/503") - hits
    out["urllib3_refused_retries"] = _record(lambda: retrying.get(dead, timeout=2))
    out["prepared"] = _record(lambda: _seen(s.send(s.prepare_request(
        requests.Request("PUT", base + "/prep", headers={"A": "1"}, json={"k": 1}))).json()))
    out["hooks"] = _record(lambda: s.get(base + "/h", hooks={"response": lambda r, **kw: setattr(r, "tag", "x")}).tag)
    return out


# -- httpx -------------------------------------------------------------------------------------------

def httpx_scenario(upstream: Any, dead: str) -> dict[str, Any]:
    import asyncio

    import httpx

    base = upstream.url
    out: dict[str, Any] = {}
    before = upstream.connections
    with httpx.Client(base_url=base, headers={"X-Client": "c"}) as c:
        out["json"] = _record(lambda: _seen(c.get("/x", params={"a": "1"}).json()))
        out["post"] = _record(lambda: _seen(c.post("/p", content=b"body").json()))
        for _ in range(3):
            c.get("/again")
        out["reused_connections"] = upstream.connections - before

        def stream() -> Any:
            with c.stream("GET", "/stream") as r:
                return [r.status_code, list(r.iter_bytes()), r.is_stream_consumed]

        out["stream"] = _record(stream)
        out["redirects"] = _record(lambda: (lambda r: [r.status_code, str(r.url).replace(base, ""),
                                                       [h.status_code for h in r.history]])(
            c.get("/redirect/3", follow_redirects=True)))
        out["no_redirect"] = _record(lambda: (lambda r: [r.status_code, r.headers["location"], r.has_redirect_location])(
            c.get("/redirect/1")))
        out["too_many"] = _record(lambda: httpx.Client(max_redirects=2).get(base + "/redirect/5", follow_redirects=True))
        c.get("/cookie")
        out["cookies"] = _record(lambda: [dict(c.cookies), _seen(c.get("/after").json())["headers"].get("cookie")])
        out["raise_for_status"] = _record(lambda: c.get("/status/404").raise_for_status())
        out["read_timeout"] = _record(lambda: c.get("/slow", timeout=0.2))
    out["refused"] = _record(lambda: httpx.get(dead))
    out["transport_retries"] = _record(lambda: httpx.Client(transport=httpx.HTTPTransport(retries=2)).get(dead))

    async def run_async() -> dict[str, Any]:
        res: dict[str, Any] = {}
        async with httpx.AsyncClient(base_url=base) as ac:
            res["json"] = _seen((await ac.get("/x", headers={"X-A": "1"})).json())
            async with ac.stream("GET", "/stream") as r:
                res["stream"] = [chunk async for chunk in r.aiter_bytes()]
            r = await ac.get("/redirect/2", follow_redirects=True)
            res["redirects"] = [r.status_code, [h.status_code for h in r.history]]
            res["gather"] = sorted(_seen(x.json())["path"] for x in await asyncio.gather(
                *(ac.get(f"/g{i}") for i in range(5))))
        try:
            async with httpx.AsyncClient() as ac:
                await ac.get(dead)
        except Exception as exc:  # noqa: BLE001
            res["refused"] = _exc(exc)
        return res

    out["async"] = _record(lambda: asyncio.run(run_async()))
    return out


# -- psycopg -----------------------------------------------------------------------------------------

def psycopg_scenario(dsn: str) -> dict[str, Any]:
    import psycopg

    out: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=False) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TEMP TABLE diff_t (id int PRIMARY KEY, name text)")
        cur.executemany("INSERT INTO diff_t VALUES (%s, %s)", [(i, f"n{i}") for i in range(20)])
        out["rowcount_executemany"] = cur.rowcount
        cur.execute("SELECT id, name FROM diff_t ORDER BY id")
        out["iterated"] = [list(r) for r in cur]
        cur.execute("SELECT count(*) FROM diff_t")
        out["fetchone"] = list(cur.fetchone())
        cur.execute("SELECT id FROM diff_t WHERE id < %s ORDER BY id", (5,))
        out["fetchmany"] = [list(r) for r in cur.fetchmany(3)] + [[-1]] + [list(r) for r in cur.fetchall()]
        out["description"] = [d.name for d in cur.description]
        with conn.cursor(name="server_side") as named:
            named.itersize = 4
            named.execute("SELECT id FROM diff_t ORDER BY id")
            out["named_iter"] = [r[0] for r in named]
        with conn.cursor(name="server_side2") as named:
            named.execute("SELECT id FROM diff_t ORDER BY id")
            out["named_fetch"] = [named.fetchmany(3), named.fetchone(), len(named.fetchall())]
            out["named_fetch"] = json.loads(json.dumps(out["named_fetch"], default=list))
        out["unique_violation"] = _record(lambda: cur.execute("INSERT INTO diff_t VALUES (1, 'dup')"))
        conn.rollback()
        out["after_rollback"] = _record(lambda: cur.execute("SELECT 1").fetchone()[0])
        out["syntax_error"] = _record(lambda: cur.execute("SELEC 1"))
        conn.rollback()
        with conn.transaction():
            cur.execute("CREATE TEMP TABLE diff_u (x int)")
            cur.execute("INSERT INTO diff_u VALUES (1), (2) RETURNING x")
            out["returning"] = [r[0] for r in cur.fetchall()]
        with conn.cursor(row_factory=psycopg.rows.dict_row) as dc:
            out["dict_row"] = dc.execute("SELECT 1 AS a, 'x' AS b").fetchone()
        out["pipeline"] = _record(lambda: _pipeline(conn))
    return out


def _pipeline(conn: Any) -> Any:
    with conn.pipeline():
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur2 = conn.cursor()
        cur2.execute("SELECT 2")
    return [cur.fetchone()[0], cur2.fetchone()[0]]


# -- redis -------------------------------------------------------------------------------------------

def redis_scenario(port: int) -> dict[str, Any]:
    import redis

    out: dict[str, Any] = {}
    r = redis.Redis(port=port, db=15, decode_responses=True)
    prefix = "instrument-diff:"
    r.delete(*[prefix + k for k in ("a", "b", "l", "h", "n")])
    out["set_get"] = [r.set(prefix + "a", "1"), r.get(prefix + "a"), r.incr(prefix + "n"), r.get(prefix + "missing")]
    with r.pipeline() as p:
        p.set(prefix + "b", "2").get(prefix + "b").rpush(prefix + "l", 1, 2, 3).lrange(prefix + "l", 0, -1)
        out["pipeline_tx"] = p.execute()
    with r.pipeline(transaction=False) as p:
        p.hset(prefix + "h", mapping={"x": "1"}).hgetall(prefix + "h").incr(prefix + "a")
        out["pipeline_plain"] = p.execute()

    def pipeline_error() -> Any:
        with r.pipeline() as p:
            p.set(prefix + "a", "x").lpush(prefix + "a", 1)
            return p.execute()

    out["pipeline_error"] = _record(pipeline_error)
    out["pipeline_error_noraise"] = _record(lambda: [type(x).__name__ if isinstance(x, Exception) else x
                                                     for x in r.pipeline().set(prefix + "a", "y")
                                                     .lpush(prefix + "a", 1).execute(raise_on_error=False)])
    out["response_error"] = _record(lambda: r.lpush(prefix + "a", 1))
    out["scan_iter"] = sorted(r.scan_iter(match=prefix + "*", count=2))
    ps = r.pubsub()
    ps.subscribe(prefix + "chan")
    first = ps.get_message(timeout=1)
    r.publish(prefix + "chan", "hello")
    msg = None
    for _ in range(20):
        msg = ps.get_message(timeout=0.5)
        if msg is not None:
            break
    out["pubsub"] = [first, msg]
    ps.close()

    def watch() -> Any:
        with r.pipeline() as p:
            p.watch(prefix + "a")
            value = p.get(prefix + "a")
            p.multi()
            p.set(prefix + "a", value + "!")
            return p.execute()

    out["watch"] = _record(watch)
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from tests.conftest import free_port

    out["refused"] = _record(lambda: redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 1)).ping())
    r.delete(*[prefix + k for k in ("a", "b", "l", "h", "n")])
    return out


# -- an upstream with a 404 that has a body -----------------------------------------------------------

def _start_upstream_ext() -> Any:
    """The shared upstream plus ``/missing``: a 404 whose JSON body echoes the request headers."""
    import threading
    from http.server import ThreadingHTTPServer

    from tests.hardening.conftest import Upstream, _Handler

    class Handler(_Handler):
        def _reply(self) -> None:
            if self.path.startswith("/missing"):
                with self.server.lock:  # type: ignore[attr-defined]
                    self.server.paths[self.path] = self.server.paths.get(self.path, 0) + 1  # type: ignore[attr-defined]
                headers = {k.lower(): v for k, v in self.headers.items()}
                payload = json.dumps({"path": self.path, "method": self.command, "headers": headers,
                                      "body": ""}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Reason", "gone")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            super()._reply()

        do_GET = do_POST = do_PUT = do_DELETE = _reply

    class Ext(Upstream):
        def __init__(self) -> None:
            ThreadingHTTPServer.__init__(self, ("127.0.0.1", 0), Handler)
            self.connections = 0
            self.lock = threading.Lock()
            self.paths = {}

    server = Ext()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# -- urllib3 -----------------------------------------------------------------------------------------

def urllib3_scenario(upstream: Any, dead: str) -> dict[str, Any]:
    import urllib3
    from urllib3.util.retry import Retry

    base = upstream.url
    out: dict[str, Any] = {}
    pm = urllib3.PoolManager(headers={"X-Pool": "p", "User-Agent": "ua"})
    before = upstream.connections
    given = {"X-Custom": "v"}
    out["json"] = _record(lambda: _seen(pm.request("GET", base + "/x?a=1", headers=given).json()))
    out["caller_headers_after"] = dict(given)
    out["pool_headers"] = _record(lambda: _seen(pm.request("GET", base + "/y").json()))
    out["post"] = _record(lambda: _seen(pm.request("POST", base + "/p", body=b"body",
                                                   headers={"Content-Type": "x/y"}).json()))
    out["fields"] = _record(lambda: _seen(pm.request("GET", base + "/f", fields={"q": "1"}).json())["path"])
    for _ in range(3):
        pm.request("GET", base + "/again")
    out["reused_connections"] = upstream.connections - before
    pool = pm.connection_from_url(base)
    out["pool_counts"] = [pool.num_connections, pool.num_requests]

    def stream() -> Any:
        r = pm.request("GET", base + "/stream", preload_content=False)
        chunks = list(r.stream(8))
        r.release_conn()
        return [r.status, r.chunked, chunks]

    out["stream"] = _record(stream)

    def stream_read() -> Any:
        r = pm.request("GET", base + "/stream", preload_content=False)
        parts = [r.read(5), r.read(5), r.read()]
        r.release_conn()
        return [parts, r.tell() if hasattr(r, "tell") else None]

    out["stream_read"] = _record(stream_read)

    def stream_chunked() -> Any:
        r = pm.request("GET", base + "/stream", preload_content=False)
        chunks = list(r.read_chunked())
        r.release_conn()
        return chunks

    out["read_chunked"] = _record(stream_chunked)

    def stream_json() -> Any:
        with pm.request("GET", base + "/s", preload_content=False) as r:
            return _seen(json.loads(r.data))

    out["stream_ctx"] = _record(stream_json)

    def redirects() -> Any:
        r = pm.request("GET", base + "/redirect/3")
        return [r.status, r.geturl().replace(base, ""), _seen(r.json())["path"],
                [[h.method, (h.url or "").replace(base, ""), h.status, h.redirect_location]
                 for h in r.retries.history]]

    out["redirects"] = _record(redirects)
    def no_redirect() -> Any:
        r = pm.request("GET", base + "/redirect/1", redirect=False)
        return [r.status, r.headers["Location"], r.get_redirect_location()]

    out["no_redirect"] = _record(no_redirect)
    out["too_many"] = _record(lambda: pm.request("GET", base + "/redirect/5", retries=Retry(redirect=2)),
                              extra=lambda e: type(getattr(e, "reason", None)).__name__)
    out["redirect_false_retry"] = _record(lambda: pm.request("GET", base + "/redirect/2",
                                                             retries=Retry(redirect=False)).status)
    hits = upstream.hits("/status/503")
    out["retry_503"] = _record(lambda: pm.request("GET", base + "/status/503", retries=Retry(
        total=2, status_forcelist=[503], backoff_factor=0, allowed_methods=None)),
        extra=lambda e: type(getattr(e, "reason", None)).__name__)
    out["retry_503_hits"] = upstream.hits("/status/503") - hits
    hits = upstream.hits("/status/503")
    def noraise() -> Any:
        r = pm.request("GET", base + "/status/503", retries=Retry(total=2, status_forcelist=[503], backoff_factor=0,
                                                                   raise_on_status=False))
        return [r.status, len(r.retries.history)]

    out["retry_503_noraise"] = _record(noraise)
    out["retry_503_noraise_hits"] = upstream.hits("/status/503") - hits
    out["status_404"] = _record(lambda: pm.request("GET", base + "/missing").status)
    out["refused"] = _record(lambda: pm.request("GET", dead, retries=Retry(connect=1, backoff_factor=0)),
                             extra=lambda e: type(getattr(e, "reason", None)).__name__)
    out["refused_no_retry"] = _record(lambda: pm.request("GET", dead, retries=False))
    out["read_timeout"] = _record(lambda: pm.request("GET", base + "/slow", retries=False,
                                                     timeout=urllib3.Timeout(read=0.2)))
    out["read_timeout_retry"] = _record(lambda: pm.request("GET", base + "/slow", timeout=urllib3.Timeout(read=0.2),
                                                           retries=Retry(read=1, backoff_factor=0)),
                                        extra=lambda e: type(getattr(e, "reason", None)).__name__)
    hp = urllib3.HTTPConnectionPool("127.0.0.1", upstream.server_address[1], maxsize=1)
    out["pool_urlopen"] = _record(lambda: [_seen(hp.urlopen("GET", "/u", headers={"A": "1"}).json()),
                                           _seen(hp.request("GET", "/v").json())["path"],
                                           hp.num_connections, hp.num_requests])
    out["toplevel"] = _record(lambda: _seen(urllib3.request("GET", base + "/top", headers={"B": "2"}).json()))
    return out


# -- urllib.request ----------------------------------------------------------------------------------

def urllib_scenario(upstream: Any, dead: str) -> dict[str, Any]:
    import http.cookiejar
    import urllib.error
    import urllib.request

    base = upstream.url
    out: dict[str, Any] = {}

    def plain_get() -> Any:
        with urllib.request.urlopen(base + "/x?a=1") as r:
            return [r.status, r.reason, r.getheader("Content-Type"), r.geturl().replace(base, ""),
                    _seen(json.loads(r.read()))]

    out["get"] = _record(plain_get)
    req = urllib.request.Request(base + "/p", data=b"body", headers={"X-Custom": "v"}, method="PUT")

    def put() -> Any:
        with urllib.request.urlopen(req) as r:
            return _seen(json.loads(r.read()))

    out["put"] = _record(put)
    # The caller's Request afterwards: the integration puts traceparent into its unredirected headers.
    out["request_after"] = [sorted((k, v) for k, v in req.header_items() if k.lower() not in TRACE_HEADERS),
                            sorted(_no_trace(req.unredirected_hdrs).items()), req.get_method()]
    out["request_after"] = _strip(out["request_after"], base.split("//")[1])

    def redirect() -> Any:
        with urllib.request.urlopen(base + "/redirect/3") as r:
            return [r.status, r.geturl().replace(base, ""), r.url.replace(base, ""), _seen(json.loads(r.read()))]

    out["redirect"] = _record(redirect)

    def not_found() -> Any:
        try:
            urllib.request.urlopen(urllib.request.Request(base + "/missing", headers={"X-Q": "1"}))
        except urllib.error.HTTPError as exc:
            body = _seen(json.loads(exc.read()))
            return [exc.code, exc.reason, exc.msg, exc.headers["X-Reason"], exc.geturl().replace(base, ""), body,
                    _exc(exc)]
        return "no error"

    out["not_found"] = _record(not_found)
    out["not_found_raised"] = _record(lambda: urllib.request.urlopen(base + "/missing"))
    out["status_500"] = _record(lambda: urllib.request.urlopen(base + "/status/500"),
                                extra=lambda e: getattr(e, "code", None))
    out["refused"] = _record(lambda: urllib.request.urlopen(dead, timeout=2),
                             extra=lambda e: type(getattr(e, "reason", None)).__name__)
    out["read_timeout"] = _record(lambda: urllib.request.urlopen(base + "/slow", timeout=0.2).read())

    class Tagging(urllib.request.BaseHandler):
        def http_request(self, request: Any) -> Any:
            request.add_header("X-Handler", "h")
            return request

        def http_response(self, request: Any, response: Any) -> Any:
            response.tagged = True
            return response

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> Any:
            return None

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), Tagging())
    opener.addheaders = [("User-Agent", "custom-ua"), ("X-Opener", "o")]

    def custom() -> Any:
        with opener.open(base + "/cookie") as r:
            first = [r.status, r.read().decode(), getattr(r, "tagged", False)]
        with opener.open(base + "/after") as r:
            seen = _seen(json.loads(r.read()))
        with opener.open(base + "/redirect/2") as r:
            redirected = [r.status, r.geturl().replace(base, "")]
        return [first, seen, sorted(c.name for c in jar), redirected]

    out["custom_opener"] = _record(custom)
    out["no_redirect_opener"] = _record(lambda: urllib.request.build_opener(NoRedirect()).open(base + "/redirect/1"),
                                        extra=lambda e: [getattr(e, "code", None), e.headers.get("Location")])
    install = urllib.request.build_opener(Tagging())
    urllib.request.install_opener(install)
    try:
        def installed() -> Any:
            with urllib.request.urlopen(base + "/inst") as r:
                return [getattr(r, "tagged", False), _seen(json.loads(r.read()))]

        out["installed_opener"] = _record(installed)
    finally:
        urllib.request.install_opener(None)
    return out


# -- aiohttp -----------------------------------------------------------------------------------------

def aiohttp_scenario(upstream: Any, dead: str) -> dict[str, Any]:
    import asyncio

    import aiohttp

    base = upstream.url

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        before = upstream.connections
        given = {"X-Custom": "v"}
        async with aiohttp.ClientSession(headers={"X-Session": "s"}) as s:
            async def json_get() -> Any:
                async with s.get(base + "/x", params={"a": "1"}, headers=given) as r:
                    return [r.status, r.reason, r.content_type, _seen(await r.json())]

            out["json"] = await _arecord(json_get())
            out["caller_headers_after"] = dict(given)

            async def post() -> Any:
                async with s.post(base + "/p", data=b"body") as r:
                    return _seen(await r.json())

            out["post"] = await _arecord(post())
            for _ in range(3):
                async with s.get(base + "/again") as r:
                    await r.read()
            out["reused_connections"] = upstream.connections - before

            async def chunks() -> Any:
                async with s.get(base + "/stream") as r:
                    got = [c async for c in r.content.iter_chunked(4)]
                    return [r.status, b"".join(got).decode(), max(len(c) for c in got) <= 4, r.content.at_eof()]

            out["iter_chunked"] = await _arecord(chunks())

            async def lines() -> Any:
                async with s.get(base + "/stream") as r:
                    return [line.decode() async for line in r.content]

            out["iter_lines"] = await _arecord(lines())

            async def bare() -> Any:
                r = await s.get(base + "/bare")
                body = _seen(await r.json())
                r.release()
                return [body, r.closed]

            out["no_context_manager"] = await _arecord(bare())

            async def redirects() -> Any:
                async with s.get(base + "/redirect/3") as r:
                    return [r.status, str(r.url).replace(base, ""), [h.status for h in r.history],
                            [str(h.url).replace(base, "") for h in r.history], _seen(await r.json())["path"]]

            out["redirects"] = await _arecord(redirects())

            async def no_redirect() -> Any:
                async with s.get(base + "/redirect/1", allow_redirects=False) as r:
                    return [r.status, r.headers["Location"], len(r.history)]

            out["no_redirect"] = await _arecord(no_redirect())

            async def too_many() -> Any:
                async with s.get(base + "/redirect/5", max_redirects=2) as r:
                    return r.status

            out["too_many"] = await _arecord(too_many(), extra=lambda e: [len(getattr(e, "history", ()))])

            async def cookies() -> Any:
                async with s.get(base + "/cookie") as r:
                    await r.read()
                async with s.get(base + "/after") as r:
                    seen = _seen(await r.json())
                return [sorted((c.key, c.value) for c in s.cookie_jar), seen["headers"].get("cookie")]

            out["cookies"] = await _arecord(cookies())

            async def raise_for_status() -> Any:
                async with s.get(base + "/missing") as r:
                    body = _seen(await r.json())
                    r.raise_for_status()
                    return body

            out["raise_for_status"] = await _arecord(raise_for_status(),
                                                     extra=lambda e: [e.status, e.message, str(e.request_info.url)
                                                                      .replace(base, "")])

            async def read_timeout() -> Any:
                async with s.get(base + "/slow", timeout=aiohttp.ClientTimeout(total=0.2)) as r:
                    return await r.read()

            out["read_timeout"] = await _arecord(read_timeout())

        async def session_raise() -> Any:
            async with aiohttp.ClientSession(raise_for_status=True) as s2, s2.get(base + "/status/500") as r:
                return r.status

        out["session_raise_for_status"] = await _arecord(session_raise(), extra=lambda e: e.status)

        async def refused() -> Any:
            async with aiohttp.ClientSession() as s3, s3.get(dead) as r:
                return r.status

        out["refused"] = await _arecord(refused())

        async def gather() -> Any:
            async with aiohttp.ClientSession(base_url=base) as s4:
                async def one(i: int) -> str:
                    async with s4.get(f"/g{i}") as r:
                        return _seen(await r.json())["path"]

                return sorted(await asyncio.gather(*(one(i) for i in range(5))))

        out["gather_base_url"] = await _arecord(gather())
        out["toplevel_request"] = await _arecord(_aiohttp_toplevel(aiohttp, base))
        return out

    return asyncio.run(run())


async def _aiohttp_toplevel(aiohttp: Any, base: str) -> Any:
    async with aiohttp.request("GET", base + "/top") as r:
        return _seen(await r.json())


# -- psycopg2 ----------------------------------------------------------------------------------------

def psycopg2_scenario(dsn: str) -> dict[str, Any]:
    import io

    import psycopg2
    import psycopg2.extensions
    import psycopg2.extras

    out: dict[str, Any] = {}
    conn = psycopg2.connect(dsn)
    out["types"] = [type(conn).__name__, isinstance(conn, psycopg2.extensions.connection)]
    cur = conn.cursor()
    out["cursor_types"] = [type(cur).__name__, isinstance(cur, psycopg2.extensions.cursor), cur.connection is conn]
    cur.execute("CREATE TEMP TABLE diff_t (id int PRIMARY KEY, name text)")
    cur.executemany("INSERT INTO diff_t VALUES (%s, %s)", [(i, f"n{i}") for i in range(20)])
    out["rowcount_executemany"] = cur.rowcount
    out["status"] = cur.statusmessage
    cur.execute("SELECT id, name FROM diff_t ORDER BY id")
    out["iterated"] = [list(r) for r in cur]
    out["query"] = cur.query.decode()
    cur.execute("SELECT id FROM diff_t WHERE id < %(n)s ORDER BY id", {"n": 5})
    out["fetchmany"] = [[list(r) for r in cur.fetchmany(3)], list(cur.fetchone()), cur.fetchall(), cur.rownumber]
    out["description"] = [d.name for d in cur.description]
    out["mogrify"] = cur.mogrify("SELECT %s, %s", (1, "a'b")).decode()
    named = conn.cursor(name="server_side")
    named.itersize = 4
    named.execute("SELECT id FROM diff_t ORDER BY id")
    out["named_iter"] = [r[0] for r in named]
    named.close()
    with conn.cursor(name="server_side2", cursor_factory=psycopg2.extras.DictCursor) as named2:
        named2.execute("SELECT id, name FROM diff_t ORDER BY id")
        out["named_fetch"] = [[dict(r) for r in named2.fetchmany(3)], dict(named2.fetchone()),
                              len(named2.fetchall()), named2.name]
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as dc:
        dc.execute("SELECT 1 AS a, 'x' AS b")
        out["real_dict"] = dc.fetchone()
    psycopg2.extras.execute_values(cur, "INSERT INTO diff_t VALUES %s", [(100 + i, "v") for i in range(5)])
    out["execute_values_rowcount"] = cur.rowcount
    cur.copy_from(io.StringIO("200\tc1\n201\tc2\n"), "diff_t")
    out["copy_from_rowcount"] = cur.rowcount
    buf = io.StringIO()
    cur.copy_expert("COPY (SELECT id FROM diff_t WHERE id >= 200 ORDER BY id) TO STDOUT", buf)
    out["copy_expert"] = buf.getvalue()
    conn.commit()
    pgcode = lambda e: [getattr(e, "pgcode", None), getattr(e, "pgerror", None),
                        getattr(getattr(e, "diag", None), "constraint_name", None)]
    out["unique_violation"] = _record(lambda: cur.execute("INSERT INTO diff_t VALUES (1, 'dup')"), extra=pgcode)
    out["in_failed_tx"] = _record(lambda: cur.execute("SELECT 1"), extra=pgcode)
    conn.rollback()
    out["after_rollback"] = _record(lambda: (cur.execute("SELECT 1"), cur.fetchone()[0])[1])
    out["syntax_error"] = _record(lambda: cur.execute("SELEC 1"), extra=pgcode)
    conn.rollback()
    out["division"] = _record(lambda: cur.execute("SELECT 1/0"), extra=pgcode)
    conn.rollback()
    with conn, conn.cursor() as c2:
        c2.execute("INSERT INTO diff_t VALUES (300, 'ctx') RETURNING id")
        out["returning"] = c2.fetchone()[0]
    out["closed_cursor"] = [c2.closed, conn.closed]
    conn.autocommit = True
    out["callproc"] = _record(lambda: (cur.callproc("abs", (-5,)), cur.fetchone()[0])[1])
    conn.close()
    out["after_close"] = _record(lambda: conn.cursor())
    out["bad_connect"] = _record(lambda: psycopg2.connect(dsn + " dbname=does_not_exist_diff"),
                                 extra=lambda e: type(e).__mro__[1].__name__)
    return out


# -- pymysql -----------------------------------------------------------------------------------------

def pymysql_scenario(host: str, port: int) -> dict[str, Any]:
    import pymysql
    import pymysql.cursors

    table = _unique("diff_my")
    out: dict[str, Any] = {}
    conn = pymysql.connect(host=host, port=port, user="root", password="", database="test")
    out["types"] = [type(conn).__name__, isinstance(conn, pymysql.connections.Connection)]
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(20))")
    try:
        out["executemany"] = cur.executemany(f"INSERT INTO {table} (id, name) VALUES (%s, %s)",
                                             [(i, f"n{i}") for i in range(20)])
        out["rowcount"] = cur.rowcount
        out["executemany_update"] = cur.executemany(f"UPDATE {table} SET name = %s WHERE id = %s",
                                                    [("u", 1), ("u", 2)])
        conn.commit()
        out["execute"] = cur.execute(f"SELECT id, name FROM {table} ORDER BY id")
        out["iterated"] = [list(r) for r in cur]
        out["description"] = [d[0] for d in cur.description]
        cur.execute(f"SELECT id FROM {table} WHERE id < %s ORDER BY id", (5,))
        out["fetch"] = [cur.fetchone(), cur.fetchmany(2), cur.fetchall(), cur.rownumber]
        out["mogrify"] = cur.mogrify("SELECT %s, %s", (1, "a'b"))
        with conn.cursor(pymysql.cursors.SSCursor) as ss:
            ss.execute(f"SELECT id FROM {table} ORDER BY id")
            out["sscursor_iter"] = [r[0] for r in ss]
        with conn.cursor(pymysql.cursors.SSDictCursor) as ss:
            ss.execute(f"SELECT id, name FROM {table} ORDER BY id")
            out["ssdict"] = [ss.fetchone(), ss.fetchmany(2), len(list(ss.fetchall_unbuffered()))]
        with conn.cursor(pymysql.cursors.DictCursor) as dc:
            dc.execute(f"SELECT id, name FROM {table} WHERE id = %(i)s", {"i": 3})
            out["dict"] = dc.fetchall()
        args = lambda e: list(getattr(e, "args", ()))
        out["integrity"] = _record(lambda: cur.execute(f"INSERT INTO {table} VALUES (1, 'dup')"), extra=args)
        conn.rollback()
        out["programming"] = _record(lambda: cur.execute("SELEC 1"), extra=args)
        out["no_table"] = _record(lambda: cur.execute(f"SELECT * FROM {table}_missing"), extra=args)
        out["executemany_integrity"] = _record(lambda: cur.executemany(
            f"INSERT INTO {table} VALUES (%s, %s)", [(50, "a"), (50, "b")]), extra=args)
        conn.rollback()
        conn.begin()
        cur.execute(f"INSERT INTO {table} VALUES (60, 'tx')")
        conn.rollback()
        out["after_rollback"] = [cur.execute(f"SELECT count(*) FROM {table}"), cur.fetchone()]
        out["insert_id"] = [cur.execute(f"INSERT INTO {table} VALUES (70, 'x')"), cur.lastrowid, conn.insert_id()]
        conn.commit()
        out["ping"] = _record(lambda: conn.ping(reconnect=False))
    finally:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()
    out["closed"] = _record(lambda: cur.execute("SELECT 1"), extra=lambda e: list(e.args))
    out["bad_db"] = _record(lambda: pymysql.connect(host=host, port=port, user="root", password="",
                                                    database="does_not_exist_diff"), extra=lambda e: list(e.args))
    return _strip(out, table)


# -- sqlite3 -----------------------------------------------------------------------------------------

def sqlite3_scenario() -> dict[str, Any]:
    import sqlite3

    out: dict[str, Any] = {}
    conn = sqlite3.connect(":memory:")
    out["types"] = [type(conn).__name__, isinstance(conn, sqlite3.Connection)]
    out["executescript"] = type(conn.executescript("""
        CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE);
        INSERT INTO t (name) VALUES ('a');
        INSERT INTO t (name) VALUES ('b');
        CREATE INDEX t_name ON t(name);
    """)).__name__
    cur = conn.cursor()
    out["cursor_types"] = [type(cur).__name__, isinstance(cur, sqlite3.Cursor), cur.connection is conn]
    cur.executemany("INSERT INTO t (name) VALUES (?)", [(f"n{i}",) for i in range(10)])
    out["executemany"] = [cur.rowcount, cur.lastrowid, conn.total_changes]
    out["iter"] = [list(r) for r in conn.execute("SELECT id, name FROM t ORDER BY id")]
    out["cursor_iter"] = [list(r) for r in cur.execute("SELECT id FROM t WHERE id < ?", (4,))]
    out["chain"] = cur.execute("SELECT count(*) FROM t").fetchone()
    out["description"] = [d[0] for d in conn.execute("SELECT id, name AS nm FROM t").description]
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT id, name FROM t WHERE id = 1").fetchone()
    out["row_factory"] = [type(row).__name__, row.keys(), row["name"], dict(row)]
    conn.row_factory = None
    cur2 = conn.cursor()
    cur2.row_factory = lambda c, r: {d[0]: v for d, v in zip(c.description, r)}
    out["cursor_row_factory"] = cur2.execute("SELECT id, name FROM t WHERE id = 2").fetchall()
    conn.text_factory = bytes
    out["text_factory"] = conn.execute("SELECT name FROM t WHERE id = 1").fetchone()[0].decode()
    conn.text_factory = str
    out["iterdump"] = list(conn.iterdump())
    code = lambda e: [list(e.args), getattr(e, "sqlite_errorname", None)]
    out["integrity"] = _record(lambda: conn.execute("INSERT INTO t (name) VALUES ('a')"), extra=code)
    out["operational"] = _record(lambda: conn.execute("SELEC 1"), extra=code)
    out["executemany_error"] = _record(lambda: conn.executemany("INSERT INTO t (name) VALUES (?)", [("z",), ("z",)]),
                                       extra=code)
    out["programming"] = _record(lambda: conn.execute("SELECT ?", (1, 2)), extra=code)
    out["script_error"] = _record(lambda: conn.executescript("SELECT 1; BOGUS;"), extra=code)
    conn.rollback()
    conn.create_function("twice", 1, lambda x: x * 2)
    out["function"] = conn.execute("SELECT twice(21)").fetchone()[0]
    try:
        with conn:
            conn.execute("INSERT INTO t (name) VALUES ('ctx')")
            raise KeyError("abort")
    except KeyError:
        pass
    out["context_rolled_back"] = conn.execute("SELECT count(*) FROM t WHERE name = 'ctx'").fetchone()[0]
    with conn:
        conn.execute("INSERT INTO t (name) VALUES ('ctx2')")
    out["in_transaction"] = conn.in_transaction
    target = sqlite3.connect(":memory:")
    out["backup"] = _record(lambda: (conn.backup(target),
                                     target.execute("SELECT count(*) FROM t").fetchone()[0])[1])

    class Custom(sqlite3.Connection):
        tag = "custom"

    c3 = sqlite3.connect(":memory:", factory=Custom)
    out["factory"] = [type(c3).__name__, getattr(c3, "tag", None), c3.execute("SELECT 7").fetchone()[0]]
    conn.close()
    out["closed"] = _record(lambda: conn.execute("SELECT 1"))
    return out


# -- asyncpg -----------------------------------------------------------------------------------------

def asyncpg_scenario(dsn: str) -> dict[str, Any]:
    import asyncio

    import asyncpg

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        conn = await asyncpg.connect(dsn)
        try:
            out["types"] = [type(conn).__name__, isinstance(conn, asyncpg.Connection)]
            await conn.execute("CREATE TEMP TABLE diff_a (id int PRIMARY KEY, name text)")
            out["executemany"] = await conn.executemany("INSERT INTO diff_a VALUES ($1, $2)",
                                                        [(i, f"n{i}") for i in range(20)])
            out["execute"] = await conn.execute("UPDATE diff_a SET name = 'u' WHERE id < 3")
            out["fetch"] = [dict(r) for r in await conn.fetch("SELECT id, name FROM diff_a WHERE id < $1 ORDER BY id", 5)]
            out["fetchrow"] = dict(await conn.fetchrow("SELECT id, name FROM diff_a WHERE id = 7"))
            out["fetchval"] = await conn.fetchval("SELECT count(*) FROM diff_a")
            out["fetchrow_none"] = await conn.fetchrow("SELECT 1 WHERE false")
            async with conn.transaction():
                out["cursor_iter"] = [r["id"] async for r in conn.cursor("SELECT id FROM diff_a ORDER BY id",
                                                                         prefetch=4)]
                cur = await conn.cursor("SELECT id FROM diff_a ORDER BY id")
                first = [r["id"] for r in await cur.fetch(3)]
                moved = await cur.forward(5)
                row = await cur.fetchrow()
                out["cursor_obj"] = [first, moved, row["id"]]
            stmt = await conn.prepare("SELECT id, name FROM diff_a WHERE id >= $1 ORDER BY id")
            out["prepared"] = [[a.name for a in stmt.get_attributes()], [p.name for p in stmt.get_parameters()],
                               len(await stmt.fetch(15)), dict(await stmt.fetchrow(18)), await stmt.fetchval(19, column=1)]
            async with conn.transaction():
                out["prepared_cursor"] = [r["id"] async for r in stmt.cursor(17)]
            out["copy"] = await conn.copy_records_to_table("diff_a", records=[(500, "c"), (501, "d")])
            state = lambda e: [getattr(e, "sqlstate", None), getattr(e, "constraint_name", None)]
            out["unique"] = await _arecord(conn.execute("INSERT INTO diff_a VALUES (1, 'dup')"), extra=state)
            out["executemany_unique"] = await _arecord(conn.executemany("INSERT INTO diff_a VALUES ($1, $2)",
                                                                        [(600, "a"), (600, "b")]), extra=state)
            out["syntax"] = await _arecord(conn.fetch("SELEC 1"), extra=state)
            out["bad_arg"] = await _arecord(conn.fetch("SELECT $1::int", "x"))

            async def rolled_back() -> Any:
                try:
                    async with conn.transaction():
                        await conn.execute("INSERT INTO diff_a VALUES (700, 'tx')")
                        raise KeyError("abort")
                except KeyError:
                    pass
                return await conn.fetchval("SELECT count(*) FROM diff_a WHERE id = 700")

            out["transaction_rollback"] = await _arecord(rolled_back())
            out["timeout"] = await _arecord(conn.execute("SELECT pg_sleep(1)", timeout=0.2))
            out["after_timeout"] = await _arecord(conn.fetchval("SELECT 42"))
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        async with pool:
            async with pool.acquire() as pc:
                out["pool"] = await pc.fetchval("SELECT 5")
            out["pool_direct"] = await pool.fetchval("SELECT 6")
        return out

    return asyncio.run(run())


# -- pika --------------------------------------------------------------------------------------------

def pika_scenario(host: str, port: int) -> dict[str, Any]:
    import pika
    import pika.exceptions

    queue = _unique("instrument_diff_q")
    out: dict[str, Any] = {}
    params = pika.ConnectionParameters(host, port, credentials=pika.PlainCredentials("guest", "guest"))
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()
    declared = ch.queue_declare(queue=queue, auto_delete=False)
    out["declared"] = [declared.method.queue, declared.method.message_count]

    def props(p: Any) -> Any:
        return [p.content_type, p.message_id, p.delivery_mode, _no_trace(p.headers), p.correlation_id]

    mine = pika.BasicProperties(content_type="text/plain", headers={"k": "v"}, message_id="m1", delivery_mode=2)
    out["publish"] = _record(lambda: ch.basic_publish("", queue, b"one", properties=mine))
    out["caller_properties_after"] = [_no_trace(mine.headers), mine.message_id]  # traceparent is put into them
    out["publish_reused_props"] = _record(lambda: [ch.basic_publish("", queue, b"again", properties=mine),
                                                   _no_trace(mine.headers)])
    out["publish_noprops"] = _record(lambda: ch.basic_publish("", queue, b"two"))
    out["publish_mandatory"] = _record(lambda: ch.basic_publish("", queue, b"three", mandatory=True))
    out["unroutable"] = _record(lambda: ch.basic_publish("", queue + "_nowhere", b"x", mandatory=True),
                                extra=lambda e: [[m.method.reply_code, m.method.reply_text, m.body]
                                                 for m in getattr(e, "messages", [])])

    def get() -> Any:
        method, p, body = ch.basic_get(queue)
        ch.basic_ack(method.delivery_tag)
        return [method.delivery_tag, method.redelivered, method.routing_key, method.message_count, props(p), body]

    out["basic_get"] = _record(get)
    out["basic_get_next"] = _record(get)
    for i in range(3):
        ch.basic_publish("", queue, f"c{i}".encode(), properties=pika.BasicProperties(headers={"i": i}))

    def consume() -> Any:
        got = []
        for method, p, body in ch.consume(queue, inactivity_timeout=0.3):
            if method is None:
                got.append(None)
                break
            got.append([method.routing_key, method.redelivered, props(p), body])
            ch.basic_ack(method.delivery_tag)
        ch.cancel()
        return got

    out["consume"] = _record(consume)
    out["basic_get_empty"] = _record(lambda: list(ch.basic_get(queue)))
    ch.basic_publish("", queue, b"nack-me")

    def requeue() -> Any:
        method, _p, body = ch.basic_get(queue)
        ch.basic_nack(method.delivery_tag, requeue=True)
        method2, _p2, body2 = ch.basic_get(queue, auto_ack=True)
        return [body, body2, method2.redelivered]

    out["nack_requeue"] = _record(requeue)
    received: list[Any] = []

    def callback_consume() -> Any:
        ch.basic_publish("", queue, b"cb", properties=pika.BasicProperties(headers={"x": 1}))

        def on_message(c: Any, method: Any, p: Any, body: bytes) -> None:
            received.append([method.routing_key, props(p), body])
            c.basic_ack(method.delivery_tag)
            c.stop_consuming()

        tag = ch.basic_consume(queue, on_message)
        ch.start_consuming()
        return [bool(tag), received]

    out["basic_consume"] = _record(callback_consume)
    out["passive_missing"] = _record(lambda: conn.channel().queue_declare(queue=queue + "_missing", passive=True),
                                     extra=lambda e: list(e.args))
    out["purge_delete"] = [ch.queue_purge(queue).method.message_count, ch.queue_delete(queue).method.message_count]
    conn.close()
    out["closed_publish"] = _record(lambda: ch.basic_publish("", queue, b"late"))
    out["refused"] = _record(lambda: pika.BlockingConnection(pika.ConnectionParameters(
        host, _dead_port(), connection_attempts=1, socket_timeout=1)))
    return _strip(out, queue)


def _dead_port() -> int:
    from tests.conftest import free_port

    return free_port()


# -- nats --------------------------------------------------------------------------------------------

def nats_scenario(port: int) -> dict[str, Any]:
    import asyncio

    import nats
    import nats.errors

    subject = _unique("instrument.diff")

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        try:
            sub = await nc.subscribe(subject + ".a")
            mine = {"k": "v"}
            await nc.publish(subject + ".a", b"one", headers=mine)
            await nc.publish(subject + ".a", b"two")
            await nc.flush()
            out["caller_headers_after"] = mine
            msgs = []
            for _ in range(2):
                m = await sub.next_msg(timeout=2)
                msgs.append([m.subject, m.data, _no_trace(m.headers), m.reply])
            out["next_msg"] = msgs
            out["next_msg_timeout"] = await _arecord(sub.next_msg(timeout=0.2))

            async def responder(m: Any) -> None:
                await m.respond(b"re:" + m.data)

            await nc.subscribe(subject + ".rpc", cb=responder)
            reply = await nc.request(subject + ".rpc", b"ping", timeout=2)
            out["request"] = [reply.data, _no_trace(reply.headers)]
            out["no_responders"] = await _arecord(nc.request(subject + ".nobody", b"x", timeout=0.5))

            got: list[Any] = []
            it_sub = await nc.subscribe(subject + ".it")
            for i in range(3):
                await nc.publish(subject + ".it", f"m{i}".encode())

            async def iterate() -> Any:
                async for m in it_sub.messages:
                    got.append(m.data)
                    if len(got) == 3:
                        break
                return got

            out["messages_iter"] = await _arecord(asyncio.wait_for(iterate(), 3))
            await sub.unsubscribe()
            out["unsubscribed"] = await _arecord(sub.next_msg(timeout=0.1))
        finally:
            await nc.drain()
        out["closed_publish"] = await _arecord(nc.publish(subject, b"late"))
        return out

    return _strip(asyncio.run(run()), subject)


# -- paho-mqtt ---------------------------------------------------------------------------------------

def paho_scenario(port: int) -> dict[str, Any]:
    import threading

    import paho.mqtt.client as mqtt

    topic = _unique("instrument/diff")
    out: dict[str, Any] = {}
    got: list[Any] = []
    trace_counts: list[bool] = []
    done = threading.Event()
    kwargs = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION2} if hasattr(mqtt, "CallbackAPIVersion") else {}
    c = mqtt.Client(client_id="", protocol=mqtt.MQTTv5, **kwargs)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        user_props = [list(p) for p in (getattr(msg.properties, "UserProperty", None) or [])
                      if p[0] not in TRACE_HEADERS]
        got.append([msg.topic, msg.payload, msg.qos, msg.retain, user_props])
        pairs = getattr(msg.properties, "UserProperty", None) or []
        trace_counts.append(sum(p[0] in TRACE_HEADERS for p in pairs) <= 1)
        if len(got) == 4:
            done.set()

    c.on_message = on_message
    out["connect"] = c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        rc, _mid = c.subscribe(topic + "/#", qos=1)
        out["subscribe_rc"] = rc
        time.sleep(0.3)
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("k", "v")]
        infos = [c.publish(topic + "/a", b"zero", qos=0), c.publish(topic + "/b", b"one", qos=1, properties=props),
                 c.publish(topic + "/c", "two", qos=2)]
        for info in infos:
            info.wait_for_publish(timeout=3)
        out["publish"] = [[i.rc, i.is_published()] for i in infos]
        # The caller's Properties afterwards, and again after reusing them (no trace context may pile up).
        out["caller_properties_after"] = [list(p) for p in props.UserProperty if p[0] not in TRACE_HEADERS]
        c.publish(topic + "/d", b"three", qos=1, properties=props).wait_for_publish(timeout=3)
        out["reused_properties"] = [[list(p) for p in props.UserProperty if p[0] not in TRACE_HEADERS],
                                    sum(p[0] in TRACE_HEADERS for p in props.UserProperty) <= 1]
        out["received_all"] = done.wait(5)
        out["messages"] = sorted(got, key=lambda m: m[0])
        out["received_trace_entries_at_most_one"] = all(trace_counts)
        out["bad_qos"] = _record(lambda: c.publish(topic, b"x", qos=3))
        out["bad_topic"] = _record(lambda: c.publish(topic + "/+", b"x"))
    finally:
        c.loop_stop()
        c.disconnect()
    return _strip(out, topic)


def main() -> None:
    name, mode = sys.argv[1], sys.argv[2]
    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    if mode == "instrumented":
        import instrument.auto  # noqa: F401
    from tests.conftest import free_port
    from tests.hardening.conftest import start_upstream

    if name in ("requests", "httpx"):
        upstream = start_upstream()
        result = globals()[f"{name}_scenario"](upstream, f"http://127.0.0.1:{free_port()}/")
    elif name in ("urllib3", "urllib", "aiohttp"):
        result = globals()[f"{name}_scenario"](_start_upstream_ext(), f"http://127.0.0.1:{free_port()}/")
    elif name == "redis":
        result = redis_scenario(args["port"])
    else:
        result = globals()[f"{name}_scenario"](**args)
    if mode == "instrumented":
        from instrument import integrations

        result["_patched"] = integrations.installed()
    print("RESULT " + json.dumps(result, default=repr, sort_keys=True))


if __name__ == "__main__":
    main()
