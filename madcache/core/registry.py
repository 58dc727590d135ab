"""One small registry class for everything users add: datasets, teachers, students, methods.

Each kind has one registry, filled in one place that its package imports, so an entry is never
missing because a module was not imported. Unknown names list the valid ones.

Plugins: a registry built with `group="madcache.<kind>s"` also reads that group's Python entry
points (another pip package's `[project.entry-points."madcache.students"]`). The entry point's
name is the registered name and the object it loads is the entry itself (what a
`REGISTRY.register(name, entry)` line would pass: a `StudentSpec`, a `Dataset`, a `Method`, a
teacher factory, ...). Entry points are listed when names are asked for and loaded only when their
name is looked up; a plugin that fails to load is one error line naming its distribution and
entry point. A built-in wins over a plugin of the same name, with a warning: a run records only
names, so installing a package must not change what an existing name means (docs/architecture.md,
"Plugins").
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

from madcache.core.errors import PluginError, UnknownNameError

T = TypeVar("T")

_NOT_LOADED = object()


class PluginWarning(UserWarning):
    """A plugin entry point that is ignored (a name taken by a built-in or another plugin)."""


def _origin(entry_point: Any) -> str:
    """`distribution 'NAME VERSION' (entry point 'name = module:attr' in group)`."""
    dist = getattr(entry_point, "dist", None)
    where = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "unknown"
    return (
        f"distribution '{where}' (entry point '{entry_point.name} = {entry_point.value}' "
        f"in {entry_point.group})"
    )


class Registry(Generic[T]):
    def __init__(self, kind: str, *, group: str | None = None) -> None:
        """`group`: the entry-point group whose plugins this registry also reads."""
        self.kind = kind
        self.group = group
        self._entries: dict[str, T] = {}
        self._plugins: dict[str, list[Any]] = {}  # name -> [entry point, loaded object]
        self._scanned_path: tuple[str, ...] | None = None

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            warnings.warn(
                f"{self.kind} '{name}' registered twice; the later one wins", stacklevel=2
            )
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        def wrap(entry: T) -> T:
            return self.register(name, entry)

        return wrap

    def _scan(self) -> dict[str, list[Any]]:
        """The group's entry points (not loaded), read again when sys.path changed (a package
        installed into a folder put on the path at run time)."""
        if self.group is None:
            return self._plugins
        path = tuple(sys.path)
        if path == self._scanned_path:
            return self._plugins
        old, self._plugins, self._scanned_path = self._plugins, {}, path
        for ep in metadata.entry_points(group=self.group):
            if ep.name in self._entries:
                warnings.warn(
                    f"{self.kind} '{ep.name}' of plugin {_origin(ep)} is ignored: "
                    f"the built-in {self.kind} of that name wins",
                    PluginWarning,
                    stacklevel=3,
                )
            elif ep.name in self._plugins:
                warnings.warn(
                    f"{self.kind} '{ep.name}' of plugin {_origin(ep)} is ignored: "
                    f"{_origin(self._plugins[ep.name][0])} registers it first",
                    PluginWarning,
                    stacklevel=3,
                )
            else:
                same = old.get(ep.name)
                keep = same is not None and same[0] == ep
                self._plugins[ep.name] = [ep, same[1] if keep else _NOT_LOADED]
        return self._plugins

    def _load(self, name: str) -> T:
        slot = self._scan()[name]
        if slot[1] is _NOT_LOADED:
            try:
                slot[1] = slot[0].load()
            except Exception as exc:  # any error of the plugin's own code: one line
                detail = str(exc).splitlines()[0] if str(exc) else ""
                raise PluginError(
                    f"{self.kind} '{name}': plugin {_origin(slot[0])} failed to "
                    f"load: {type(exc).__name__}"
                    + (f": {detail}" if detail else "")
                    + "; fix or uninstall that package"
                ) from None
        return slot[1]

    def get(self, name: str) -> T:
        plugins = self._scan()  # also when a built-in answers: a clash is warned about
        if name in self._entries:
            return self._entries[name]
        if name in plugins:
            return self._load(name)
        raise UnknownNameError(
            f"unknown {self.kind} '{name}'. Available: {', '.join(self.names())}"
        ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._scan()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        return sorted({*self._entries, *self._scan()})

    def builtin_names(self) -> list[str]:
        """The names registered by madcache itself (no plugin)."""
        return sorted(self._entries)
