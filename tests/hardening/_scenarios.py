"""Client scenarios for the differential tests: run as ``python _scenarios.py <name> <plain|instrumented>``.

Each scenario exercises a client's less common paths and returns a JSON-able record of everything
observable: values, exception types and messages, traceback tail frame names, headers the server saw
(minus trace context), connection counts. test_differential.py runs each twice, without and with
``import instrument.auto``, and compares the records.
"""

from __future__ import annotations

import json
import sys
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


def _record(fn: Any) -> Any:
    try:
        return {"ok": fn()}
    except Exception as exc:  # noqa: BLE001 - the record is the point
        return {"raised": _exc(exc)}


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
    elif name == "psycopg":
        result = psycopg_scenario(args["dsn"])
    else:
        result = redis_scenario(args["port"])
    if mode == "instrumented":
        from instrument import integrations

        result["_patched"] = integrations.installed()
    print("RESULT " + json.dumps(result, default=repr, sort_keys=True))


if __name__ == "__main__":
    main()
