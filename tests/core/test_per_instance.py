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


class Client:  # made per call by applications: its target is marked weakly
    def request(self, url: str) -> tuple[Any, str]:
        return self, url


class Unhashable(Pool):
    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = None  # type: ignore[assignment]


@pytest.fixture
def target():  # type: ignore[no-untyped-def]
    module = types.ModuleType("instrument_test_per_instance")
    module.Pool, module.SlotPool, module.Client = Pool, SlotPool, Client  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    seen: list[tuple[Any, tuple[Any, ...]]] = []

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        seen.append((instance, args))
        return wrapped(*args, **kwargs)

    found = Target(module.__name__, "Pool.getconn", per_instance=True)
    slotted = Target(module.__name__, "SlotPool.getconn", per_instance=True)
    weak = Target(module.__name__, "Client.request", per_instance=True, weakly=True)
    patching.apply((found, slotted, weak), wrapper)
    yield found, seen
    patching.revert((found, slotted, weak))
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
    client = Client()
    for pool in pools:
        pool.getconn()
    client.request("/")
    assert all("getconn" in vars(pool) for pool in pools) and "request" in vars(client)
    patching.revert((found, Target(found.module, "Client.request", per_instance=True, weakly=True)))
    assert not patching.is_patched(found) and not any("getconn" in vars(pool) for pool in pools)
    assert pools[0].getconn(5.0) == (pools[0], 5.0) and client.request("/c") == (client, "/c")
    assert "request" not in vars(client) and len(seen) == 4  # plain again
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


def test_an_object_with_its_own_wrapper_is_freed_once_unreachable(target) -> None:  # type: ignore[no-untyped-def]
    """Its wrapper refers to it (a cycle the collector frees); nothing of ours may keep it beyond that."""
    found, seen = target
    pool = Pool()
    pool.getconn()
    assert "getconn" in vars(pool)
    gone = weakref.ref(pool)
    seen.clear()  # (the fixture's wrapper keeps the objects it saw)
    del pool
    gc.collect()
    assert gone() is None
    patching.revert((found,))  # with no object left to strip
    assert not patching.is_patched(found)


def test_a_weakly_held_object_is_freed_at_its_last_reference(target) -> None:  # type: ignore[no-untyped-def]
    """A client made per call: its own wrapper holds it weakly, so it goes with its last reference, the cycle
    collector off, as a client dropped unclosed does without us (its sockets with it)."""
    _found, seen = target
    client = Client()
    assert client.request("/a") == (client, "/a") and client.request("/b") == (client, "/b")
    assert "request" in vars(client) and seen[-2:] == [(client, ("/a",)), (client, ("/b",))]
    gone = weakref.ref(client)
    seen.clear()
    gc.disable()
    try:
        del client
        assert gone() is None
    finally:
        gc.enable()


def test_an_object_s_own_wrapper_looks_like_its_bound_method(target) -> None:  # type: ignore[no-untyped-def]
    _found, _seen = target
    pool, client = Pool(), Client()
    pool.getconn()
    client.request("/")
    for obj, name in ((pool, "getconn"), (client, "request")):
        method = getattr(obj, name)
        original = type(obj).__dict__[name].__wrapped__
        assert name in vars(obj) and method.__name__ == name and method.__qualname__ == original.__qualname__
        assert method.__self__ is obj and method.__func__ is original and method.__wrapped__ == original.__get__(obj)
        assert list(inspect.signature(method).parameters) == list(inspect.signature(original).parameters)[1:]


def test_a_weakly_held_method_kept_past_its_object_says_so(target) -> None:  # type: ignore[no-untyped-def]
    _found, seen = target
    client = Client()
    client.request("/")
    kept = client.request  # taken after the first call: the object's own wrapper, which does not keep it
    seen.clear()
    del client
    gc.collect()
    with pytest.raises(ReferenceError, match="Client.request: its object no longer exists"):
        kept("/")


def test_revert_leaves_a_method_the_object_set_itself(target) -> None:  # type: ignore[no-untyped-def]
    found, _seen = target
    pool = Pool()
    pool.getconn()

    def own_getconn(timeout: float | None = None) -> str:
        return "its own"

    pool.getconn = own_getconn  # type: ignore[method-assign]
    patching.revert((found,))
    assert pool.getconn() == "its own"


def test_an_on_request_target_gives_objects_their_own_only_when_asked() -> None:
    """Objects made per call keep the class-level wrapper at every call; an object the caller knows to be
    long-lived gets its own from own(), held by it; revert takes it away."""
    module = types.ModuleType("instrument_test_per_instance_on_request")
    module.Pool = Pool  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    seen: list[Any] = []
    found = Target(module.__name__, "Pool.getconn", per_instance=True, on_request=True)
    patching.apply((found,), lambda wrapped, instance, args, kwargs: seen.append(instance) or wrapped(*args, **kwargs))
    try:
        made, kept = Pool(), Pool()
        made.getconn()
        made.getconn()
        assert "getconn" not in vars(made) and seen == [made, made]  # wrapped, at the class level
        patching.own(kept, "getconn")
        own = vars(kept)["getconn"]
        assert kept.getconn(1.0) == (kept, 1.0) and seen[-1] is kept and own.__self__ is kept
        patching.own(kept, "getconn")
        assert vars(kept)["getconn"] is own  # once
        patching.own(kept, "__init__")  # not a target: nothing
        assert "__init__" not in vars(kept)
        patching.revert((found,))
        assert "getconn" not in vars(kept) and kept.getconn(2.0) == (kept, 2.0) and len(seen) == 3
    finally:
        patching.revert((found,))
        del sys.modules[module.__name__]


def test_own_is_a_single_lookup_while_no_on_request_target_of_that_name_is_installed() -> None:
    """psycopg_pool asks on every checkout of a connection without one; with psycopg's integration off, that
    must not walk the connection's class hierarchy each time."""
    module = types.ModuleType("instrument_test_per_instance_own_off")
    module.Pool = Pool  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    found = Target(module.__name__, "Pool.getconn", per_instance=True, on_request=True)
    walked: list[Any] = []
    real = patching.static_attribute
    patching.static_attribute = lambda cls, name: walked.append(cls) or real(cls, name)  # type: ignore[assignment]
    try:
        pool = Pool()
        patching.own(pool, "getconn")
        assert walked == [] and "getconn" not in vars(pool)
        patching.apply((found,), lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs))
        patching.own(pool, "getconn")
        assert walked and "getconn" in vars(pool)
        patching.revert((found,))
        walked.clear()
        patching.own(Pool(), "getconn")
        assert walked == []
    finally:
        patching.static_attribute = real  # type: ignore[assignment]
        patching.revert((found,))
        del sys.modules[module.__name__]
