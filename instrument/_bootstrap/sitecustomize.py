"""Put on PYTHONPATH by ``instrument run``: initialise the toolkit before the application's code runs.

A bad configuration was already reported by ``instrument run`` itself, which checks it before starting
the program; if the environment changed since, report the one line and carry on uninstrumented.
"""

import os
import sys

try:
    import instrument

    instrument.init()
except Exception as exc:  # noqa: BLE001 - never stop the application from starting
    sys.stderr.write(f"instrument: not started: {exc}\n")

# Chain to an application's own sitecustomize, if one is further down the path.
_here = os.path.dirname(os.path.abspath(__file__))
for _entry in list(sys.path):
    if os.path.abspath(_entry or ".") == _here:
        continue
    _candidate = os.path.join(_entry or ".", "sitecustomize.py")
    if os.path.isfile(_candidate):
        import importlib.util

        _spec = importlib.util.spec_from_file_location("_app_sitecustomize", _candidate)
        if _spec and _spec.loader:
            _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
        break
