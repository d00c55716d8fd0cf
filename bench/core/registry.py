"""String-keyed registries with auto-discovery of one-file plug-ins.

The registry key is the module's file name (``algorithms/gvpo.py`` -> ``"gvpo"``); it is also the
preset key and the MLflow param value. Duplicate names raise; unknown names suggest the closest.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

from bench.core.errors import BenchError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str):
        self.kind = kind  # "algorithm" / "task": used in error messages
        self.package = package  # package whose modules are imported to discover entries
        self._items: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = item
        return item

    def discover(self) -> None:
        """Import every module of the package not starting with '_' (each registers itself)."""
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{self.package}.{mod.name}")

    def get(self, name: str) -> T:
        self.discover()
        if name not in self._items:
            raise BenchError(f"unknown {self.kind} '{name}'" + did_you_mean(name, self.names()))
        return self._items[name]

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._items
