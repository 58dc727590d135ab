"""One small registry class for everything users add: datasets, teachers, students, methods.

Each kind has one registry, filled in one place that its package imports, so an entry is never
missing because a module was not imported. Unknown names list the valid ones.
"""

from __future__ import annotations

import warnings
from typing import Callable, Generic, Iterator, TypeVar

from madcache.core.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            warnings.warn(f"{self.kind} '{name}' registered twice; the later one wins", stacklevel=2)
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        def wrap(entry: T) -> T:
            return self.register(name, entry)
        return wrap

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'. Available: {', '.join(sorted(self._entries))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)
