"""Pre-fork servers: gunicorn --preload with sync and uvicorn workers, and the fork hook itself.

Each worker must export its own traces, metrics and logs (its own service.instance.id and process.pid),
nothing may deadlock, and policy state (breakers) is per worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port, run_python

WSGI_APP = textwrap.dedent("""
    import instrument.auto  # at module top: runs once in the gunicorn master (--preload)
    import logging, os, json
    import requests
    from instrument import policies

    UPSTREAM = os.environ["UPSTREAM"]
    # Trip the breaker for a dead target in the master: workers must not inherit an open breaker.
    for _ in range(3):
        try:
            requests.get(os.environ["DEAD"], timeout=0.5)
        except Exception:
            pass
    MASTER_BREAKERS = {b.target: b.state for b in policies.breakers()}
    log = logging.getLogger("app")

    def app(environ, start_response):
        response = requests.get(UPSTREAM + "/work")
        log.warning("served pid=%s", os.getpid())
        body = json.dumps({"pid": os.getpid(), "status": response.status_code, "master": MASTER_BREAKERS,
                           "breakers": {b.target: b.state for b in policies.breakers()}}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
""")

ASGI_APP = textwrap.dedent("""
    import instrument.auto
    import json, logging, os
    import httpx

    UPSTREAM = os.environ["UPSTREAM"]
    log = logging.getLogger("app")

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        async with httpx.AsyncClient() as client:
            response = await client.get(UPSTREAM + "/work")
        log.warning("served pid=%s", os.getpid())
        body = json.dumps({"pid": os.getpid(), "status": response.status_code}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
""")


def _gunicorn(tmp_path: Path, app_source: str, env: dict[str, str], *extra: str) -> tuple[subprocess.Popen[str], int]:
    (tmp_path / "app.py").write_text(app_source)
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    full_env.update(env)
    full_env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "-w", "2", "-b", f"127.0.0.1:{port}",
         "--graceful-timeout", "5", "--timeout", "30", *extra, "app:app"],
        cwd=tmp_path, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, port


def _drive_until_two_workers(proc: subprocess.Popen[str], port: int, timeout: float = 30.0) -> dict[int, dict]:
    answers: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while len(answers) < 2:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"only workers {sorted(answers)} answered within {timeout}s")
        try:
            # A new connection per request, so that the kernel spreads them over both workers.
            reply = requests.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}, timeout=5)
        except requests.ConnectionError:
            time.sleep(0.1)
            continue
        body = reply.json()
        answers.setdefault(body["pid"], body)
    return answers


def _stop(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"gunicorn did not stop within {timeout}s of SIGTERM:\n{out}") from None
    return out


def _assert_per_worker_telemetry(receiver, pids: set[int]) -> None:
    def by_worker(items):
        return {int(i.resource.get("process.pid", 0)) for i in items} & pids

    # Each worker exports on its batch processors' schedule (5 s) after building its exporter (imported on
    # first export): on a loaded 2-core machine that can take a while, so wait generously.
    signals = {
        "client spans": lambda: [s for s in receiver.spans() if s.kind == "CLIENT"],
        "duration points": lambda: receiver.metric_points("http.client.request.duration"),
        "'served' logs": lambda: [r for r in receiver.logs() if str(r.body).startswith("served")],
    }
    for name, items in signals.items():
        try:
            receiver.wait_for(lambda items=items: by_worker(items()) == pids, timeout=30)
        except AssertionError:
            seen = sorted({int(i.resource.get("process.pid", 0)) for i in items()})
            raise AssertionError(f"{name} not from every worker {sorted(pids)} within 30 s; from pids {seen}; "
                                 f"received: {receiver.summary()}") from None
    # Each worker has its own service.instance.id, distinct from each other's.
    instances: dict[int, set[str]] = {}
    for span in receiver.spans():
        pid = int(span.resource.get("process.pid", 0))
        if pid in pids:
            instances.setdefault(pid, set()).add(span.resource["service.instance.id"])
    assert all(len(ids) == 1 for ids in instances.values()), instances
    assert len(set().union(*instances.values())) == 2, instances


@pytest.mark.timeout(90)
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_gunicorn_preload_sync_workers_export_their_own_telemetry(tmp_path, receiver, upstream, protocol):
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**receiver.env(protocol), "OTEL_SERVICE_NAME": "preforked", "UPSTREAM": upstream.url,
           "DEAD": dead + "/", "INSTRUMENT_POLICIES": f"{dead}=breaker(window=3,min_calls=2,wait=60s)",
           "INSTRUMENT_LOG_LEVEL": "info"}
    proc, port = _gunicorn(tmp_path, WSGI_APP, env)
    try:
        answers = _drive_until_two_workers(proc, port)
        pids = set(answers)
        # The master tripped its breaker while preloading; each worker starts with its own, closed one.
        for body in answers.values():
            assert body["status"] == 200
            assert body["master"] == {dead: "open"}, body
            assert body["breakers"] == {}, body
        try:
            _assert_per_worker_telemetry(receiver, pids)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ngunicorn output:\n{_stop(proc)[-6000:]}") from None
    finally:
        out = _stop(proc) if proc.poll() is None else ""
    assert proc.returncode == 0, out
    assert "Failed to detach context" not in out
    assert "deadlock" not in out.lower()


@pytest.mark.timeout(90)
def test_gunicorn_preload_uvicorn_workers_export_their_own_telemetry(tmp_path, receiver, upstream):
    pytest.importorskip("uvicorn")
    worker_class = "uvicorn_worker.UvicornWorker"
    try:
        import uvicorn_worker  # noqa: F401 - uvicorn >= 0.30 moved its gunicorn worker to this package
    except ImportError:
        worker_class = "uvicorn.workers.UvicornWorker"
    env = {**receiver.env("grpc"), "OTEL_SERVICE_NAME": "preforked-asgi", "UPSTREAM": upstream.url}
    proc, port = _gunicorn(tmp_path, ASGI_APP, env, "-k", worker_class)
    try:
        answers = _drive_until_two_workers(proc, port)
        assert all(b["status"] == 200 for b in answers.values())
        _assert_per_worker_telemetry(receiver, set(answers))
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    assert "Failed to detach context" not in out


def test_fork_child_gets_its_own_identity_and_fresh_state(receiver):
    """os.fork() directly: resource, gRPC channel, breaker registry, reported-once set and the SQL deadline
    watchdog (the parent's running statements are not the child's to cancel) per child."""
    code = textwrap.dedent("""
        import os, json, time
        import instrument
        instrument.init()
        from opentelemetry import trace
        from instrument import _call, _fork, _safety
        from instrument.policies import _config
        tracer = trace.get_tracer("t")
        with tracer.start_as_current_span("in-parent"):
            pass
        trace.get_tracer_provider().force_flush()
        parent_id = trace.get_tracer_provider().resource.attributes["service.instance.id"]
        _safety.report("somewhere", RuntimeError("x"))
        _config._registry[(0, "http://x:1")] = ("breaker",)
        ep = _call.endpoint("http", "http", "http://inflight:1")
        ep._in_flight.add(1)
        from instrument import _dbapi
        _dbapi.watchdog.arm(time.monotonic() + 60.0, print, "a statement of the parent's")  # still running at the fork
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            tp = trace.get_tracer_provider()
            attrs = tp.resource.attributes
            with tracer.start_as_current_span("in-child"):
                pass
            flushed = tp.force_flush(5000)
            inherited = (len(_dbapi.watchdog._armed), _dbapi.watchdog._thread is None)
            handle = _dbapi.watchdog.arm(time.monotonic() + 60.0, print, "the child's own")
            watchdog = [*inherited, _dbapi.watchdog._thread is not None, _dbapi.watchdog.disarm(handle) is False]
            state = {"watchdog": watchdog, "pid": os.getpid(), "instance": attrs["service.instance.id"], "rpid": attrs["process.pid"],
                     "ppid": attrs.get("process.parent_pid"), "seen": sorted(_safety._seen),
                     "registry": len(_config._registry), "inflight": ep.active_requests, "flushed": flushed}
            os.write(w, json.dumps(state).encode())
            instrument.shutdown(2)
            os._exit(0)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        child = json.loads(os.read(r, 65536))
        print(json.dumps({"parent": os.getpid(), "parent_instance": parent_id, "child": child,
                          "status": status}))
    """)
    result = run_python(code, env={**receiver.env("grpc"), "OTEL_SERVICE_NAME": "forked"}, timeout=60)
    assert result.returncode == 0, result.stderr
    import json

    out = json.loads(result.stdout.strip().splitlines()[-1])
    child = out["child"]
    assert out["status"] == 0
    assert child["rpid"] == child["pid"] != out["parent"]
    assert child["ppid"] == out["parent"]
    assert child["instance"] != out["parent_instance"]
    assert child["seen"] == [] and child["registry"] == 0 and child["inflight"] == 0
    assert child["flushed"] is True
    assert child["watchdog"] == [0, True, True, True]  # nothing inherited; the child's own thread and statements
    span = receiver.wait_for_span(lambda s: s.name == "in-child")
    assert span.resource["service.instance.id"] == child["instance"]
    assert int(span.resource["process.pid"]) == child["pid"]
    parent_span = receiver.wait_for_span(lambda s: s.name == "in-parent")
    assert parent_span.resource["service.instance.id"] == out["parent_instance"]


def test_fork_child_reports_its_own_call_durations_under_its_own_resource(receiver):
    """A worker whose only metrics are the toolkit's own aggregates (no SDK instrument has data to report)."""
    code = textwrap.dedent("""
        import json, os
        import instrument
        instrument.init()
        from opentelemetry import metrics, trace
        from instrument import _call

        def call(host):
            ep = _call.endpoint("db", "postgresql", f"postgresql://{host}:5432/db", server_address=host)
            ep.call(ep.op("SELECT"), lambda: None, (), {})

        call("in-parent")
        metrics.get_meter_provider().force_flush(5000)
        pid = os.fork()
        if pid == 0:
            call("in-child")
            metrics.get_meter_provider().force_flush(5000)
            instrument.shutdown(2)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"parent": os.getpid(), "child": pid, "status": status,
                          "instance": trace.get_tracer_provider().resource.attributes["service.instance.id"]}))
    """)
    result = run_python(code, env={**receiver.env("grpc"), "OTEL_SERVICE_NAME": "forked"}, timeout=60)
    assert result.returncode == 0, result.stderr
    import json

    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["status"] == 0

    def point(host):
        return receiver.wait_for(lambda: next((p for p in receiver.metric_points("db.client.operation.duration")
                                               if p.attributes.get("server.address") == host), None))

    child, parent = point("in-child"), point("in-parent")
    assert int(child.resource["process.pid"]) == out["child"], child.resource
    assert child.resource["service.instance.id"] != out["instance"]
    assert int(parent.resource["process.pid"]) == out["parent"]
    assert parent.resource["service.instance.id"] == out["instance"]


def test_fork_during_a_metric_collection_leaves_the_child_able_to_report(receiver):
    """The parent's metric reader is collecting (an observable callback is running) when the app forks.

    The SDK's collection lock must not be copied into the child as held: the child's reader would wait for
    it forever and the worker would never report a metric (seen with gunicorn --preload).
    """
    code = textwrap.dedent("""
        import json, os, signal, threading, time
        import instrument
        instrument.init()
        from opentelemetry import metrics
        from opentelemetry.metrics import Observation
        from instrument import _call

        collecting, forked = threading.Event(), threading.Event()

        def slow_callback(_options):
            if not forked.is_set():
                collecting.set()
                time.sleep(0.5)  # the fork is requested now, in the middle of this collection
            return [Observation(1)]

        metrics.get_meter("t").create_observable_gauge("slow.gauge", [slow_callback])
        assert collecting.wait(10)
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)  # a child stuck on a lock it inherited held dies here instead of hanging the test
            ep = _call.endpoint("db", "postgresql", "postgresql://child-host:5432/db", server_address="child-host")
            ep.call(ep.op("SELECT"), lambda: None, (), {})
            ok = metrics.get_meter_provider().force_flush(5000)
            instrument.shutdown(2)
            os._exit(0 if ok else 3)
        forked.set()
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"child": pid, "status": status}))
    """)
    result = run_python(code, env={**receiver.env("grpc", interval_ms=100), "OTEL_SERVICE_NAME": "forked"},
                        timeout=60)
    assert result.returncode == 0, result.stderr
    import json

    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["status"] == 0, f"child ended with wait status {out['status']} (14 = stuck until its alarm)"
    point = receiver.wait_for(lambda: next((p for p in receiver.metric_points("db.client.operation.duration")
                                            if p.attributes.get("server.address") == "child-host"), None))
    assert int(point.resource["process.pid"]) == out["child"]


def test_sdk_at_fork_handler_does_not_deadlock_when_futures_is_imported_late():
    """The SDK's child hook uses a ThreadPoolExecutor; concurrent.futures imported after the providers
    would register its lock-reset hook after theirs, and the child would hang. _fork.prepare() prevents it."""
    code = textwrap.dedent("""
        import os, sys
        assert "concurrent.futures.thread" not in sys.modules, "precondition: nothing imported it yet"
        import instrument
        instrument.init()
        import concurrent.futures.thread  # late: after the providers exist
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child exited", status)
    """)
    result = run_python(code, env={"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
                                   "OTEL_LOGS_EXPORTER": "none"}, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "child exited 0" in result.stdout


def test_sdk_shape_the_fork_hook_relies_on():
    """Fails if the SDK changes the private shape instrument/_fork.py and _export.py use."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, ConsoleLogRecordExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    from instrument import _export, _fork

    for provider in (TracerProvider(shutdown_on_exit=False), MeterProvider(shutdown_on_exit=False),
                     LoggerProvider(shutdown_on_exit=False)):
        assert callable(getattr(provider, "_update_resource", None)), type(provider)
        assert callable(getattr(provider, "_handle_fork", None)), type(provider)  # the SDK renews instance id
        provider._update_resource(Resource({"process.pid": 1}))
        assert _fork._resource_of(provider).attributes["process.pid"] == 1
        provider.shutdown()
    for processor in (BatchSpanProcessor(ConsoleSpanExporter()), BatchLogRecordProcessor(ConsoleLogRecordExporter())):
        assert _export.count_queue_drops(processor, "traces")
        processor.shutdown()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:1", insecure=True)
    assert callable(exporter._initialize_channel_and_stub) and exporter._channel is not None
    exporter.shutdown()
    # The metric readers' export lock, held across fork() so that no child inherits it taken mid-export.
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=60_000)
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    assert reader in provider._metric_readers and hasattr(reader._export_lock, "acquire")
    provider.shutdown()


def test_a_fork_waits_for_an_export_in_progress_and_the_child_can_export():
    """The parent's export thread holds the reader's export lock while exporting (here: a slow export);
    fork() waits for it, and the child's exports are not blocked by a lock copied in the taken state."""
    code = textwrap.dedent("""
        import os, sys, threading, time
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader
        from instrument import _fork, _otel

        class Slow(MetricExporter):
            def __init__(self):
                super().__init__()
            def export(self, data, timeout_millis=0, **kw):
                time.sleep(0.5)
                return MetricExportResult.SUCCESS
            def force_flush(self, timeout_millis=0):
                return True
            def shutdown(self, timeout_millis=0, **kw):
                pass

        reader = PeriodicExportingMetricReader(Slow(), export_interval_millis=100_000)
        provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        metrics.set_meter_provider(provider)
        metrics.get_meter("t").create_counter("c").add(1)
        _fork.install(_otel.Providers(meter_provider=provider, owned=[provider]))
        threading.Thread(target=reader.collect, daemon=True).start()
        time.sleep(0.1)  # the export is under way, its lock taken
        pid = os.fork()
        if pid == 0:
            ok = reader._export_lock.acquire(timeout=2)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
    """)
    result = run_python(code, env={"OTEL_SDK_DISABLED": "false"}, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["child", "0"]


def test_a_child_forked_while_the_parent_reads_its_aggregates_does_not_hang():
    """A metric reader copies the toolkit's aggregate registry under a module lock, outside the SDK's locks
    that fork() waits for; a child forked meanwhile gets that lock taken and must not wait on it forever."""
    code = textwrap.dedent("""
        import os, signal, threading, time
        from instrument import _aggregates, _fork

        taken = threading.Event()

        def reader():
            with _aggregates._lock:  # what a collection does while it copies the registry
                taken.set()
                time.sleep(2)

        threading.Thread(target=reader, daemon=True).start()
        taken.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(5)  # a hang ends the child with SIGALRM
            _fork.after_in_child()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
    """)
    result = run_python(code, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["child", "0"]


def test_every_module_lock_of_the_toolkit_is_renewed_in_a_forked_child():
    """A lock added to a module later must be added to the child's renewals too (or have its own reset)."""
    code = textwrap.dedent("""
        import importlib, pkgutil, threading
        import instrument
        from instrument import _fork

        kinds = (type(threading.Lock()), type(threading.RLock()))
        found = set()
        for info in pkgutil.walk_packages(instrument.__path__, "instrument."):
            if info.name.endswith((".auto", ".__main__")):
                continue  # importing these starts the toolkit
            module = importlib.import_module(info.name)
            found |= {(info.name, key) for key, value in vars(module).items() if isinstance(value, kinds)}
        for name in ("instrument", "instrument.integrations", "instrument.integrations.redis"):
            module = importlib.import_module(name)
            found |= {(name, key) for key, value in vars(module).items() if isinstance(value, kinds)}
        renewed = set(_fork._MODULE_LOCKS)
        own_reset = {("instrument._export", "_lock")}  # _export.reset() renews it
        test_only = {("instrument.testing._memory", "_lock")}
        print(sorted(found - renewed - own_reset - test_only), sorted(renewed - found))
    """)
    result = run_python(code, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[] []"


def test_a_forked_child_builds_its_own_exporters() -> None:
    """An exporter the parent built (its session or channel possibly mid-export at the fork) is not reused:
    the child builds a fresh one on its first export, and never closes the parent's."""
    from instrument import _fork
    from instrument._otel import Deferred

    class Exporter:
        closed = False

        def shutdown(self) -> None:
            self.closed = True

    deferred = Deferred(Exporter)
    parents = deferred._exporter()
    _fork._rebuild_deferred_exporters()
    childs = deferred._exporter()
    assert childs is not parents and isinstance(childs, Exporter)
    assert not parents.closed and parents in _fork._abandoned
