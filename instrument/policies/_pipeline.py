"""Pipeline: an ordered tuple of policies, the first outermost, composed once into nested callables.

``Pipeline("payments", (Timeout(10), Retry(3), CircuitBreaker("payments"), Timeout(2)))`` runs
``Timeout(10).call(<Retry(3).call(<CircuitBreaker.call(<Timeout(2).call(fn, ...)>)>)>)``. Composition is
``functools.partial(outer.call, inner)`` built in ``__init__``: a call costs one C-level partial per
policy and no per-call allocation of our own. Any object with ``call``/``acall`` is a policy (the fault
injector, your own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from ._base import decorate

__all__ = ["Pipeline"]


def _direct(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


async def _adirect(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return await fn(*args, **kwargs)


class Pipeline:
    """Policies applied in order, the first outermost.

    ``call(fn, *args, **kwargs)`` and ``acall(...)`` run ``fn`` through every policy; an instance is also
    a decorator for sync and ``async def`` functions.

    .. versionadded:: 0.1
    """

    def __init__(self, name: str, policies: Iterable[Any] = ()) -> None:
        self.name = self.target = name
        self.policies = tuple(policies)
        call: Callable[..., Any] = _direct
        acall: Callable[..., Any] = _adirect
        if self.policies:
            call = self.policies[-1].call
            acall = self.policies[-1].acall
            for policy in reversed(self.policies[:-1]):
                call = partial(policy.call, call)
                acall = partial(policy.acall, acall)
        # Instance attributes shadow the methods below: the composed callables are called directly.
        self.call = call  # type: ignore[method-assign]
        self.acall = acall  # type: ignore[method-assign]

    @classmethod
    def empty(cls, name: str = "empty") -> Pipeline:
        """A pipeline that just calls the function (for tests)."""
        return cls(name, ())

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:  # replaced per instance
        raise NotImplementedError

    async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:  # replaced per instance
        raise NotImplementedError

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return decorate(self, fn)

    def __iter__(self) -> Any:
        return iter(self.policies)

    def __len__(self) -> int:
        return len(self.policies)

    def __repr__(self) -> str:
        return f"Pipeline({self.target!r}, {self.policies!r})"
