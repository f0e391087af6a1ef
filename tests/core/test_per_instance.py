"""patching's per_instance targets: an object gets a wrapper of its own at its first call, a class that
overrides the method keeps its own, objects that cannot hold one keep the class-level wrapper, and revert
takes every one of them away."""

from __future__ import annotations

import gc
import inspect
import sys
import types
import weakref
from typing import Any

import pytest

from instrument import patching
from instrument.patching import Target


class Pool:
    def getconn(self, timeout: float | None = None) -> tuple[Any, float | None]:
        return self, timeout


class OwnPool(Pool):
    def getconn(self, timeout: float | None = None) -> tuple[Any, float | None]:
        conn, _ = super().getconn(timeout)
        return conn, -1.0  # its own result: must survive


class SlotPool:  # no __dict__ to hold a wrapper
    __slots__ = ()

    def getconn(self, timeout: float | None = None) -> tuple[Any, float | None]:
        return self, timeout


class Unhashable(Pool):
    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = None  # type: ignore[assignment]


@pytest.fixture
def target():  # type: ignore[no-untyped-def]
    module = types.ModuleType("instrument_test_per_instance")
    module.Pool, module.SlotPool = Pool, SlotPool  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    seen: list[tuple[Any, tuple[Any, ...]]] = []

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        seen.append((instance, args))
        return wrapped(*args, **kwargs)

    found = Target(module.__name__, "Pool.getconn", per_instance=True)
    slotted = Target(module.__name__, "SlotPool.getconn", per_instance=True)
    patching.apply((found, slotted), wrapper)
    yield found, seen
    patching.revert((found, slotted))
    del sys.modules[module.__name__]


def test_an_object_gets_its_own_wrapper_at_its_first_call(target) -> None:  # type: ignore[no-untyped-def]
    found, seen = target
    pool = Pool()
    assert "getconn" not in vars(pool)
    assert pool.getconn(1.0) == (pool, 1.0)
    own = vars(pool)["getconn"]
    assert pool.getconn(timeout=2.0) == (pool, 2.0)
    assert vars(pool)["getconn"] is own  # made once
    assert seen == [(pool, (1.0,)), (pool, ())]  # both calls wrapped, the object handed over each time
    other = Pool()
    other.getconn()
    assert vars(other)["getconn"] is not own and seen[-1][0] is other
    assert patching.is_patched(found)


def test_a_class_with_its_own_method_or_no_dict_keeps_the_class_level_wrapper(target) -> None:  # type: ignore[no-untyped-def]
    _found, seen = target
    own = OwnPool()
    assert own.getconn(3.0) == (own, -1.0) and own.getconn(4.0) == (own, -1.0)  # its override still runs
    assert "getconn" not in vars(own) and [args for _, args in seen] == [(3.0,), (4.0,)]  # wrapped via super()
    slots, odd = SlotPool(), Unhashable()
    for pool in (slots, odd, slots, odd):
        assert pool.getconn() == (pool, None)
    assert not hasattr(slots, "__dict__") and "getconn" not in vars(odd)
    assert len(seen) == 6


def test_revert_takes_every_object_s_wrapper_away_and_apply_brings_them_back(target) -> None:  # type: ignore[no-untyped-def]
    found, seen = target
    pools = [Pool() for _ in range(3)]
    for pool in pools:
        pool.getconn()
    assert all("getconn" in vars(pool) for pool in pools)
    patching.revert((found,))
    assert not patching.is_patched(found) and not any("getconn" in vars(pool) for pool in pools)
    assert pools[0].getconn(5.0) == (pools[0], 5.0) and len(seen) == 3  # plain again
    patching.apply((found,), lambda wrapped, instance, args, kwargs: seen.append((instance, args)) or wrapped(*args))
    pools[1].getconn(6.0)
    pools[1].getconn(7.0)
    assert seen[-2:] == [(pools[1], (6.0,)), (pools[1], (7.0,))] and "getconn" in vars(pools[1])


def test_a_call_through_the_class_keeps_the_object_s_wrapper(target) -> None:  # type: ignore[no-untyped-def]
    _found, seen = target
    pool = Pool()
    pool.getconn()
    own = vars(pool)["getconn"]
    assert Pool.getconn(pool, 8.0) == (pool, 8.0) and vars(pool)["getconn"] is own
    assert seen[-1] == (pool, (8.0,))


def test_an_object_with_its_own_wrapper_is_freed_at_its_last_reference(target) -> None:  # type: ignore[no-untyped-def]
    """Its wrapper refers to it weakly: no cycle, so it goes with its last reference, the cycle collector off,
    as a client dropped unclosed does without us (its socket with it)."""
    found, seen = target
    pool = Pool()
    pool.getconn()
    assert "getconn" in vars(pool)
    gone = weakref.ref(pool)
    seen.clear()  # (the fixture's wrapper keeps the objects it saw)
    gc.disable()
    try:
        del pool
        assert gone() is None
    finally:
        gc.enable()
    patching.revert((found,))  # with no object left to strip
    assert not patching.is_patched(found)


def test_an_object_s_own_wrapper_looks_like_its_bound_method(target) -> None:  # type: ignore[no-untyped-def]
    _found, _seen = target
    pool = Pool()
    pool.getconn()
    method = pool.getconn
    assert "getconn" in vars(pool) and method.__name__ == "getconn" and method.__qualname__ == "Pool.getconn"
    assert method.__self__ is pool and method.__func__ is Pool.__dict__["getconn"].__wrapped__
    assert method.__wrapped__ == Pool.__dict__["getconn"].__wrapped__.__get__(pool)
    assert list(inspect.signature(method).parameters) == ["timeout"]


def test_revert_leaves_a_method_the_object_set_itself(target) -> None:  # type: ignore[no-untyped-def]
    found, _seen = target
    pool = Pool()
    pool.getconn()

    def own_getconn(timeout: float | None = None) -> str:
        return "its own"

    pool.getconn = own_getconn  # type: ignore[method-assign]
    patching.revert((found,))
    assert pool.getconn() == "its own"
