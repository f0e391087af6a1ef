"""Every integration, in a fresh interpreter: library imported before or after init, then unpatch and
patch again. Each target ends wrapped exactly once by us, and unpatch restores the original object."""

from __future__ import annotations

import json
import textwrap

import pytest

from instrument.integrations import REGISTRY
from tests.conftest import run_python

SCRIPT = textwrap.dedent("""
    import importlib, json, sys
    order, name = sys.argv[1], sys.argv[2]
    from instrument import integrations, patching
    library = integrations.REGISTRY[name][0]
    if order == "before":
        importlib.import_module(library)
    import instrument
    instrument.init()
    if order == "after":
        importlib.import_module(library)
    module = importlib.import_module(integrations.REGISTRY[name][1])

    def state():
        out = []
        for target in module.TARGETS:
            found = patching._resolve(target)
            if found is None:
                continue
            current = found[2]
            depth = 0
            while patching.is_ours(current):
                depth += 1
                current = current.__wrapped__
            out.append([target.attribute, depth, id(current)])
        return out

    patched = state()
    integrations.unpatch(name)
    unpatched = state()
    integrations.patch(name)
    integrations.patch(name)
    repatched = state()
    print(json.dumps({"patched": patched, "unpatched": unpatched, "repatched": repatched,
                      "installed": integrations.installed()}))
""")


def _library_installed(name: str) -> bool:
    import sys
    from importlib.util import find_spec

    top = REGISTRY[name][0].split(".")[0]
    if top in sys.modules:
        return True
    try:
        return find_spec(top) is not None
    except (ImportError, ValueError):
        return False


@pytest.mark.parametrize("order", ["before", "after"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_patch_unpatch_in_every_order(name, order):
    if not _library_installed(name):
        pytest.skip(f"{REGISTRY[name][0]} is not installed")
    env = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
           "DJANGO_SETTINGS_MODULE": ""}
    result = run_python(SCRIPT, env=env, argv=[order, name])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert name in out["installed"]
    assert out["patched"], f"{name}: no target resolved"
    assert all(depth == 1 for _, depth, _ in out["patched"]), out["patched"]
    assert all(depth == 0 for _, depth, _ in out["unpatched"]), out["unpatched"]
    assert all(depth == 1 for _, depth, _ in out["repatched"]), out["repatched"]
    # The same original object underneath every time.
    assert [o for _, _, o in out["patched"]] == [o for _, _, o in out["unpatched"]] == \
        [o for _, _, o in out["repatched"]]
