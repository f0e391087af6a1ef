"""The Python way in: :class:`inject`, a context manager and decorator (sync and async)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from instrument.faults import _registry
from instrument.faults._rules import Rule, parse_rules

__all__ = ["inject"]

F = TypeVar("F", bound=Callable[..., Any])


class inject:  # noqa: N801 - used like a function: ``with inject("redis://*: timeout 2s"):``
    """Inject faults for the duration of a block or of each call of a decorated function.

    ::

        with faults.inject("http://payments:*: error 30%", seed=7) as scope:
            ...
        assert scope.injected >= 1

        @faults.inject("redis://*: timeout 2s first=3")
        async def test_cache_outage(): ...

    Rules apply process-wide (every thread and task) while the scope is open, ahead of the
    environment's rules; counters and the seeded generator start afresh on each entry.

    Args:
        *rules: rule text (several rules may share one string, separated by ``;``) or :class:`Rule`.
        seed: seed for reproducible sampling (default: ``INSTRUMENT_FAULTS_SEED`` is not used; random).

    Raises:
        ConfigError: at construction, naming the bad rule and token.

    .. versionadded:: 0.1
    """

    def __init__(self, *rules: str | Rule, seed: int | None = None) -> None:
        parsed: list[Rule] = []
        for item in rules:
            if isinstance(item, Rule):
                parsed.append(item)
            else:
                parsed.extend(parse_rules(item, variable="inject()"))
        self.rules: tuple[Rule, ...] = tuple(parsed)
        self.seed = seed
        self._open: list[tuple[_registry.Armed, ...]] = []
        self._last: tuple[_registry.Armed, ...] = ()

    # -- scope -----------------------------------------------------------------------------------

    def _enter(self) -> inject:
        armed = _registry.arm(self.rules, self.seed, f"inject{id(self)}" if self.seed is None else "inject")
        self._open.append(armed)
        self._last = armed
        _registry.push(armed)
        return self

    def _exit(self) -> None:
        if self._open:
            _registry.pop(self._open.pop())

    def __enter__(self) -> inject:
        return self._enter()

    def __exit__(self, *exc: object) -> None:
        self._exit()

    async def __aenter__(self) -> inject:
        return self._enter()

    async def __aexit__(self, *exc: object) -> None:
        self._exit()

    def remove(self) -> None:
        """Close every open entry of this scope now (what the pytest fixture does at teardown)."""
        while self._open:
            self._exit()

    # -- what happened ---------------------------------------------------------------------------

    @property
    def injected(self) -> int:
        """Faults injected by the most recent entry of this scope."""
        return sum(a.fired for a in self._last)

    @property
    def counts(self) -> dict[str, int]:
        """Faults injected per rule text by the most recent entry."""
        return {a.rule.text: a.fired for a in self._last}

    # -- decorator -------------------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await fn(*args, **kwargs)

            return awrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"inject({'; '.join(r.text for r in self.rules)!r})"
