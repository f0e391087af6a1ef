"""The ``instrument`` command: run, config, doctor (and demo).

    instrument run -- python app.py     start a program with the toolkit initialised (no code change)
    instrument config                   the effective configuration and where each value came from
    instrument doctor                   is the OTLP endpoint reachable; which client libraries get patched
    instrument demo                     the storefront demo (see README)
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from instrument.errors import ConfigError

EXIT_CONFIG = 2


def _settings_or_exit():  # type: ignore[no-untyped-def]
    from instrument._settings import Settings

    try:
        return Settings.from_env()
    except ConfigError as exc:
        sys.stderr.write(f"instrument: {exc}\n")
        raise SystemExit(EXIT_CONFIG) from None


def cmd_run(argv: Sequence[str]) -> int:
    command = list(argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        sys.stderr.write("instrument run: nothing to run; usage: instrument run -- python app.py\n")
        return EXIT_CONFIG
    _settings_or_exit()  # fail fast, with one line, before the program starts
    import instrument._bootstrap as bootstrap

    here = os.path.dirname(os.path.abspath(bootstrap.__file__))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    from shutil import which

    program = which(command[0]) or command[0]
    try:
        os.execve(program, command, env)
    except OSError as exc:
        sys.stderr.write(f"instrument run: cannot run {command[0]!r}: {exc.strerror}\n")
        return 127
    return 0  # pragma: no cover - execve does not return


def cmd_config(_argv: Sequence[str]) -> int:
    settings = _settings_or_exit()
    from instrument._settings import VARIABLES

    width = max(len(v.name) for v in VARIABLES)
    for var in VARIABLES:
        raw = os.environ.get(var.name)
        source = "env" if raw not in (None, "") else "default"
        value = raw if source == "env" else var.default
        if any(s in var.name for s in ("HEADERS",)) and source == "env":
            value = "REDACTED"
        print(f"{var.name:<{width}}  {value!s:<30}  ({source})")
    print()
    print(f"service.name        {settings.service_name}")
    for signal in ("traces", "metrics", "logs"):
        exp = getattr(settings, signal)
        where = exp.endpoint or ("default" if exp.kind == "otlp" else "-")
        print(f"{signal:<19} {exp.kind} {exp.protocol if exp.kind == 'otlp' else ''} {where}".rstrip())
    return 0


def _reachable(url: str, timeout: float = 1.0) -> tuple[bool, str]:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"{host}:{port} accepts connections"
    except OSError as exc:
        return False, f"{host}:{port} unreachable ({exc.strerror or exc})"


def cmd_doctor(_argv: Sequence[str]) -> int:
    settings = _settings_or_exit()
    from importlib.util import find_spec

    from instrument.integrations import REGISTRY, enabled_names

    ok = True
    for signal in ("traces", "metrics", "logs"):
        exp = getattr(settings, signal)
        if exp.kind != "otlp":
            print(f"{signal}: exporter {exp.kind}")
            continue
        url = exp.endpoint or ("http://localhost:4317" if exp.protocol == "grpc" else "http://localhost:4318")
        up, detail = _reachable(url)
        ok &= up
        print(f"{signal}: OTLP {exp.protocol} {url}: {'ok' if up else 'NOT REACHABLE'} - {detail}")
    enabled = set(enabled_names(settings))
    print("integrations:")
    for name, (library, _module) in sorted(REGISTRY.items()):
        try:
            installed = find_spec(library.split(".")[0]) is not None
        except (ImportError, ValueError):
            installed = False
        if not installed:
            state = "library not installed"
        elif name in enabled:
            state = "will be patched"
        else:
            state = "disabled"
        print(f"  {name:<14} {state}")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="instrument", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "config", "doctor", "demo"))
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else EXIT_CONFIG
    command, rest = args[0], args[1:]
    if command == "run":
        return cmd_run(rest)
    if command == "config":
        return cmd_config(rest)
    if command == "doctor":
        return cmd_doctor(rest)
    if command == "demo":
        try:
            from instrument.demo import main as demo_main
        except ImportError:
            sys.stderr.write("instrument demo: not available in this build\n")
            return 1
        return int(demo_main(rest) or 0)
    parser.parse_args(args)
    return EXIT_CONFIG


if __name__ == "__main__":
    raise SystemExit(main())
