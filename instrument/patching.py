"""Patching helpers shared by every integration: one table of targets drives both patch and unpatch.

``apply(TARGETS, sync_wrapper, async_wrapper)`` wraps each target with wrapt (idempotent: a target
already wrapped by us is left alone); ``revert(TARGETS)`` restores the original via ``__wrapped__``,
as wrapt has no unwrap. Both read the same table, so they cannot drift apart.

A method called over and over on the same objects (a connection pool's ``getconn``, an HTTP client's
transport) can be marked ``per_instance``: each object then gets, at its first call, a wrapper of its own in
its ``__dict__``, so later calls skip what a class-level wrapper costs on every call: wrapt binding it to the
object (about 4k instructions and 1.5-2 µs of a real request here, more than the call through it). Objects
that cannot hold one (no ``__dict__``, not weakly referenceable) and classes that override the method keep
the class-level wrapper; ``revert`` removes the objects' wrappers too.

How that wrapper holds its object depends on how applications use it. Objects that live as long as the
application (a pool, a web app) are held by it: wrapt around the method bound to the object, the cheapest
call. That is a reference cycle, so such an object, dropped, is freed by the cycle collector rather than at
its last reference: fine for them, not for clients that applications make per call and drop unclosed, whose
sockets would stay open until the collector ran (3,000 ``urllib3.PoolManager().request()`` calls left 5,909
descriptors open instead of 8). Those targets are marked ``weakly`` too: the wrapper holds its object by a
weak reference (one Python call more, 0.1 µs), so it goes at its last reference as without us
(tests/hardening/test_unclosed_clients.py counts the descriptors). Its one difference from a bound method: a
reference to it taken after the object's first call does not keep the object alive, so only methods that the
library itself looks up and calls at once (a pool's ``urlopen``, a transport's ``handle_request``) are marked
so, never one an application would hold on to. A method called both on long-lived objects and on objects
made per call (a psycopg connection's ``execute``, pooled or not) is marked ``on_request``: the class-level
wrapper serves every object, and only the objects that the caller knows to be long-lived get their own,
from :func:`own` (psycopg_pool's integration hands it each connection its pool lends).
"""

from __future__ import annotations

import importlib
import threading
import types
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import wrapt

__all__ = ["Target", "apply", "is_ours", "is_patched", "own", "revert", "static_attribute"]


@dataclass(frozen=True, slots=True)
class Target:
    """``module`` and dotted ``attribute`` path of a function or method to wrap (``"Session.send"``)."""

    module: str
    attribute: str
    is_async: bool = False
    optional: bool = False  # missing in some versions of the library: skip quietly
    per_instance: bool = False  # a method of long-lived objects: each object gets its own wrapper (see above)
    weakly: bool = False  # with per_instance: that wrapper holds its object weakly (clients made per call)
    on_request: bool = False  # with per_instance: only the objects handed to own() get one (see own)


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


def static_attribute(cls: type, name: str) -> Any:
    """What ``cls`` defines as ``name`` along its MRO, unbound (None if nothing): is it our wrapper, or a
    subclass's own method?"""
    return next((k.__dict__[name] for k in cls.__mro__ if name in k.__dict__), None)


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
        if target.per_instance and isinstance(parent, type) and isinstance(original, types.FunctionType):
            installed = _PerInstance(name, original, chosen, target.weakly, target.on_request).install()
        else:
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
            owners = _PerInstance.owners.pop(id(current), None)
            if owners is not None:
                owners.strip()
                if owners.on_request:
                    _on_request[owners.name] -= 1


_on_request: dict[str, int] = {}  # method name -> how many on_request targets of that name are installed


def own(instance: Any, name: str) -> None:
    """Give ``instance`` its own wrapper of its method ``name`` now, if that is a ``per_instance`` target of
    ours marked ``on_request``: for a method of objects that only the caller knows to be long-lived (a pool's
    connections, whose ``execute`` applications also call on connections they make per call and drop)."""
    if not _on_request.get(name):  # (the target's integration is off: one lookup, not a walk of the MRO)
        return
    per = _PerInstance.owners.get(id(static_attribute(type(instance), name)))
    if per is not None:
        per._own(instance)  # noqa: SLF001


class _Own:
    """An object's own wrapper that holds it weakly (see ``weakly``): calls the wrapper with the method bound to
    the object, as the class-level wrapper would. Anything else (``__name__``, ``__self__``, ``__wrapped__``
    ...) is the bound method's. ``_self_wrapper`` is named as wrapt names it, so that revert tells ours apart
    from a method the object set itself the same way for both kinds."""

    __slots__ = ("ref", "original", "_self_wrapper")

    def __init__(self, ref: weakref.ref[Any], original: types.FunctionType, wrapper: Callable[..., Any]) -> None:
        self.ref = ref
        self.original = original
        self._self_wrapper = wrapper

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        instance = self.ref()
        if instance is None:  # held on to past its object's life (see ``weakly``)
            raise ReferenceError(f"{self.original.__qualname__}: its object no longer exists")
        return self._self_wrapper(self.original.__get__(instance), instance, args, kwargs)

    @property
    def __wrapped__(self) -> Any:
        return self.original.__get__(self.ref())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__wrapped__, name)


class _PerInstance:
    """A class-level wrapper that, on an object's first call (or from :func:`own`), gives the object a wrapper
    of its own."""

    owners: ClassVar[dict[int, _PerInstance]] = {}  # id(class-level wrapper) -> its _PerInstance, until reverted

    def __init__(self, name: str, original: types.FunctionType, wrapper: Callable[..., Any], weakly: bool,
                 on_request: bool) -> None:
        self.name = name
        self.original = original
        self.wrapper = wrapper
        self.weakly = weakly
        self.on_request = on_request
        self.installed: Any = None
        # The objects given a wrapper, for revert. Weakly, and without their wrappers: a wrapper may refer to its
        # object, so a table holding it (a WeakKeyDictionary's value) would keep the object alive for good.
        self.held: weakref.WeakSet[Any] = weakref.WeakSet()
        self.eligible: dict[type, bool] = {}  # does the class resolve `name` to our class-level wrapper?
        self.lock = threading.Lock()  # an object's first call against revert's strip

    def install(self) -> Any:
        # on_request: the class-level wrapper is a plain one (objects get theirs from own(), not at a first call)
        self.installed = wrapt.FunctionWrapper(self.original, self.wrapper if self.on_request else self._first)
        _PerInstance.owners[id(self.installed)] = self
        if self.on_request:
            _on_request[self.name] = _on_request.get(self.name, 0) + 1
        return self.installed

    def _first(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if instance is not None:
            self._own(instance)
        return self.wrapper(wrapped, instance, args, kwargs)

    def _own(self, instance: Any) -> None:
        cls = type(instance)
        eligible = self.eligible.get(cls)
        if eligible is None:  # a subclass's own method (which may call ours through super()) stays its own
            eligible = self.eligible[cls] = (static_attribute(cls, self.name) is self.installed
                                             and hasattr(instance, "__dict__"))
        if not eligible or self.name in instance.__dict__:  # (called through the class: it has its own already)
            return
        with self.lock:
            if _PerInstance.owners.get(id(self.installed)) is not self:  # reverted meanwhile
                return
            try:
                own = (_Own(weakref.ref(instance), self.original, self.wrapper) if self.weakly
                       else wrapt.FunctionWrapper(self.original.__get__(instance, cls), self.wrapper))
                self.held.add(instance)  # first: an object revert could not find again gets none
            except TypeError:  # not weakly referenceable, or not hashable
                self.eligible[cls] = False
                return
            try:
                instance.__dict__[self.name] = own
            except (TypeError, AttributeError):  # a __dict__ that refuses it
                self.held.discard(instance)
                self.eligible[cls] = False

    def strip(self) -> None:
        with self.lock:
            for instance in list(self.held):
                state = getattr(instance, "__dict__", None)
                own = state.get(self.name) if state is not None else None
                if getattr(own, "_self_wrapper", None) is self.wrapper:  # (not something the object set itself)
                    del state[self.name]
            self.held.clear()
