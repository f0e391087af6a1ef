"""What ``import instrument.auto`` adds to interpreter start-up, measured in fresh subprocesses.

Each run times the import itself inside a new interpreter (``perf_counter`` around the import, then
``os._exit`` so that exit-time flushing is not counted); ``python -c pass`` runs are interleaved to show
the interpreter's own start-up for scale. Two settings: exporters ``none`` and the default OTLP/gRPC.

The toolkit is measured as an application installs it, not as a developer's editable install: the
editable install's import hook is loaded by ``site`` at every start-up and brings pathlib, re, enum,
urllib.parse and more with it, which the import then finds already loaded (it read about 10 ms less than
a regular install here, and ``python -c pass`` 21 ms instead of 9). So the harness builds the toolkit's
wheel into a throwaway virtual environment whose only other entry is a ``.pth`` line pointing at this
environment's packages (the dependencies; a ``.pth`` file in a directory added that way is not run), and
times that environment's interpreter. Without a build backend at hand it falls back to this interpreter,
and says so.

Bytecode is cached as in an installed application (pip compiles at install time): the runs share a
private ``PYTHONPYCACHEPREFIX``, filled by one warm-up run, even where ``PYTHONDONTWRITEBYTECODE`` is set
(it is on some CI images, and would make every run compile the toolkit's sources: ~40 ms here).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

_PYCACHE = tempfile.mkdtemp(prefix="instrument-startup-pycache-")
atexit.register(shutil.rmtree, _PYCACHE, True)
_CWD = tempfile.mkdtemp(prefix="instrument-startup-cwd-")  # run there: not where a source tree would shadow the install
atexit.register(shutil.rmtree, _CWD, True)
# The import timed by the clock the harness uses: CPU time of the new process (default; what the import
# costs, undisturbed by other processes on a shared machine) or elapsed time.
_SNIPPET = ("import time, os, sys; now = time.{clock}; t = now(); import instrument.auto; "
            "sys.stdout.write(repr(now() - t)); sys.stdout.flush(); os._exit(0)")
_CLOCKS = {"cpu": "process_time", "wall": "perf_counter"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "INSTRUMENT_")) and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = _PYCACHE
    env.update(extra)
    return env


@functools.cache
def python() -> tuple[str, str]:
    """(interpreter, how the toolkit is installed for it): a throwaway virtual environment with the toolkit's
    wheel, or this interpreter when the wheel cannot be built (no build backend at hand, no source tree)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        return sys.executable, "as this interpreter has it (no source tree to build a wheel from)"
    home = Path(tempfile.mkdtemp(prefix="instrument-startup-venv-"))
    atexit.register(shutil.rmtree, home, True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(home)], check=True, capture_output=True,
                       timeout=120)
        venv_python = str(home / ("Scripts" if os.name == "nt" else "bin") / Path(sys.executable).name)
        site_packages = subprocess.run([venv_python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                       check=True, capture_output=True, text=True, timeout=60).stdout.strip()
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                        "--target", site_packages, str(root)], check=True, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        last = detail.decode(errors="replace").strip().splitlines()[-1:] if isinstance(detail, bytes) else []
        return sys.executable, f"as this interpreter has it (the wheel could not be built: {' '.join(last) or exc})"
    # the dependencies: this environment's packages, after the wheel's own directory
    paths = dict.fromkeys(sysconfig.get_path(kind) for kind in ("purelib", "platlib"))
    Path(site_packages, "instrument-startup-deps.pth").write_text("".join(f"{p}\n" for p in paths))
    return venv_python, "installed from its wheel in a fresh virtual environment"


def measure(runs: int, clock: str = "cpu") -> dict[str, dict[str, float]]:
    snippet = _SNIPPET.format(clock=_CLOCKS[clock])
    executable = python()[0]
    configs = {
        "exporters none": _env(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none"),
        "OTLP/gRPC exporters (default)": _env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9"),
    }
    samples: dict[str, list[float]] = {name: [] for name in configs}
    bare: list[float] = []
    for env in configs.values():  # warm-up: fills the bytecode cache
        subprocess.run([executable, "-c", snippet], check=True, env=env, capture_output=True, timeout=60, cwd=_CWD)
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([executable, "-c", "pass"], check=True, env=_env(), cwd=_CWD)
        bare.append((time.perf_counter() - t) * 1000)
        for name, env in configs.items():
            out = subprocess.run([executable, "-c", snippet], check=True, env=env, capture_output=True,
                                 text=True, timeout=60, cwd=_CWD)
            samples[name].append(float(out.stdout.strip()) * 1000)
    result = {name: _stats(v) for name, v in samples.items()}
    result["python -c pass (whole process, elapsed, for scale)"] = _stats(bare)
    return result


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def top_imports(limit: int = 12) -> list[tuple[float, str]]:
    """The slowest cumulative imports under ``import instrument.auto`` (``-X importtime``), in ms."""
    measure(1)  # the bytecode cache
    out = subprocess.run([python()[0], "-X", "importtime", "-c", "import instrument.auto"], env=_env(
        OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none"),
        capture_output=True, text=True, timeout=60, cwd=_CWD)
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self, cumulative, name = line[len("import time:"):].split("|", 2)
        rows.append((int(cumulative) / 1000, name.rstrip()))
    rows.sort(reverse=True)
    return rows[:limit]
