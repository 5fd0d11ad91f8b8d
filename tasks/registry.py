"""A named registry that refuses duplicates: loaders, backends, and later strategies, judges,
selectors, rewards and benchmarks all register here instead of living in if/elif chains.

`allowed` ties a registry to the names its config schema admits, so an implementation that no
recipe could select fails at import, not silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    def __init__(self, what: str, allowed: Iterable[str] | None = None):
        self.what = what
        self.allowed = tuple(allowed) if allowed is not None else None
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        if self.allowed is not None and name not in self.allowed:
            raise ValueError(
                f"{self.what} '{name}' is not allowed by the config schema (allowed: {', '.join(self.allowed)}); "
                "add it to configs/schema.py first"
            )

        def decorate(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} '{name}' is already registered ({self._entries[name]!r})")
            self._entries[name] = entry
            return entry

        return decorate

    def unregister(self, name: str) -> T:
        """Remove an entry and return it (e.g. a test's temporary registration)."""
        entry = self[name]
        del self._entries[name]
        return entry

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(f"no {self.what} named '{name}' (registered: {known})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
