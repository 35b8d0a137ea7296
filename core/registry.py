"""Typed name -> object registries filled by plugins through the register_* hooks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """A duplicate or unknown name; the message says which and lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; people should read plain text
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to plugin-provided objects of one kind (models, weight formats, ...).

    ``add`` refuses a name that is already taken (two plugins claiming one name is a bug to
    surface, not to resolve silently); ``get`` of an unknown name lists the known ones.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}

    def add(self, name: str, item: T, owner: str = "?") -> None:
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if name in self._items:
            raise RegistryError(
                f"{self.kind} {name!r} is registered twice: by {self._owners[name]} and by {owner}; "
                "rename one of them or disable one plugin (NYBBLE_PLUGINS)"
            )
        self._items[name] = item
        self._owners[name] = owner

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none registered)"
            raise RegistryError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def owner(self, name: str) -> str:
        self.get(name)
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
