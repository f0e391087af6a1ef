"""Patching helpers shared by every integration: one table of targets drives both patch and unpatch.

``apply(TARGETS, sync_wrapper, async_wrapper)`` wraps each target with wrapt (idempotent: a target
already wrapped by us is left alone); ``revert(TARGETS)`` restores the original via ``__wrapped__``,
as wrapt has no unwrap. Both read the same table, so they cannot drift apart.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import wrapt

__all__ = ["Target", "apply", "is_patched", "revert"]

_MARK = "_instrument_wrapper"


@dataclass(frozen=True, slots=True)
class Target:
    """``module`` and dotted ``attribute`` path of a function or method to wrap (``"Session.send"``)."""

    module: str
    attribute: str
    is_async: bool = False
    optional: bool = False  # missing in some versions of the library: skip quietly


class _Wrapper(wrapt.FunctionWrapper):  # type: ignore[misc]
    """Our FunctionWrapper subclass, so that we can recognise our own wrappers."""


def _resolve(target: Target) -> tuple[Any, str, Any] | None:
    try:
        module = importlib.import_module(target.module)
    except ImportError:
        if target.optional:
            return None
        raise
    parent: Any = module
    *path, name = target.attribute.split(".")
    for part in path:
        parent = getattr(parent, part, None)
        if parent is None:
            if target.optional:
                return None
            raise AttributeError(f"{target.module}.{target.attribute}")
    if not hasattr(parent, name):
        if target.optional:
            return None
        raise AttributeError(f"{target.module}.{target.attribute}")
    original = parent.__dict__.get(name, getattr(parent, name)) if isinstance(parent, type) else getattr(parent, name)
    return parent, name, original


def is_patched(target: Target) -> bool:
    found = _resolve(target)
    return found is not None and isinstance(found[2], _Wrapper)


def apply(targets: Iterable[Target], wrapper: Callable[..., Any], async_wrapper: Callable[..., Any] | None = None) -> None:
    """Wrap every target (sync ones with ``wrapper``, async ones with ``async_wrapper``); idempotent."""
    for target in targets:
        found = _resolve(target)
        if found is None:
            continue
        parent, name, original = found
        if isinstance(original, _Wrapper):
            continue
        chosen = async_wrapper if target.is_async and async_wrapper is not None else wrapper
        setattr(parent, name, _Wrapper(original, chosen))


def revert(targets: Iterable[Target]) -> None:
    """Restore every wrapped target to the original; idempotent."""
    for target in targets:
        found = _resolve(target)
        if found is None:
            continue
        parent, name, current = found
        if isinstance(current, _Wrapper):
            setattr(parent, name, current.__wrapped__)
