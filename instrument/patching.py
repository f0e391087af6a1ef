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

__all__ = ["Target", "apply", "is_ours", "is_patched", "revert"]


@dataclass(frozen=True, slots=True)
class Target:
    """``module`` and dotted ``attribute`` path of a function or method to wrap (``"Session.send"``)."""

    module: str
    attribute: str
    is_async: bool = False
    optional: bool = False  # missing in some versions of the library: skip quietly


# Our installed wrappers by id, to recognise them (a FunctionWrapper subclass would be the obvious mark,
# but wrapt's C binding path is twice as slow for subclasses: ~0.8 µs more per wrapped call here).
_ours: dict[int, Any] = {}


def is_ours(obj: Any) -> bool:
    """Whether ``obj`` is a wrapper that :func:`apply` installed and :func:`revert` has not removed."""
    return _ours.get(id(obj)) is obj


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
    return found is not None and is_ours(found[2])


def apply(targets: Iterable[Target], wrapper: Callable[..., Any], async_wrapper: Callable[..., Any] | None = None) -> None:
    """Wrap every target (sync ones with ``wrapper``, async ones with ``async_wrapper``); idempotent."""
    for target in targets:
        found = _resolve(target)
        if found is None:
            continue
        parent, name, original = found
        if is_ours(original):
            continue
        chosen = async_wrapper if target.is_async and async_wrapper is not None else wrapper
        installed = wrapt.FunctionWrapper(original, chosen)
        _ours[id(installed)] = installed
        setattr(parent, name, installed)


def revert(targets: Iterable[Target]) -> None:
    """Restore every wrapped target to the original; idempotent."""
    for target in targets:
        found = _resolve(target)
        if found is None:
            continue
        parent, name, current = found
        if is_ours(current):
            setattr(parent, name, current.__wrapped__)
            del _ours[id(current)]
