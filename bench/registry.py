"""A small generic registry with helpful errors.

One instance per kind of thing (methods, datasets, models). Unknown names get
a close-match suggestion and the list of what is available; registering the
same name twice fails loudly and says where each side came from.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the options."""

    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, available
        super().__init__(unknown_message(kind, name, available))

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


def unknown_message(kind: str, name: str, available: list[str]) -> str:
    close = difflib.get_close_matches(str(name), available, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"Unknown {kind} '{name}'.{hint} Available: {', '.join(sorted(available))}"


class Registry(Generic[T]):
    """Name -> object, with lazy 'module:attr' entries resolved on first use."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T | str] = {}
        self._origin: dict[str, str] = {}

    def register(self, name: str, obj: T | str, origin: str = "") -> None:
        current = self._items.get(name)
        if isinstance(current, str) and not isinstance(obj, str) and current == origin:
            self._items[name] = obj  # the lazy entry's own module registering its object
            return
        if name in self._items and current is not obj:
            raise ValueError(
                f"{self.kind} '{name}' is registered twice: by {self._origin[name]} "
                f"and by {origin or obj!r}"
            )
        self._items[name] = obj
        self._origin[name] = origin or (obj if isinstance(obj, str) else repr(obj))

    def decorator(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            self.register(name, obj, origin=f"{getattr(obj, '__module__', '?')}")
            return obj

        return wrap

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UnknownNameError(self.kind, name, self.names())
        obj = self._items[name]
        if isinstance(obj, str):
            obj = load_import_path(obj)
            self._items[name] = obj
        return obj  # type: ignore[return-value]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def load_import_path(path: str):
    """Resolve 'package.module:Attr' to the object it names."""
    if ":" not in path:
        raise ValueError(f"Import path '{path}' must look like 'package.module:ClassName'")
    module_name, attr = path.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"Cannot import module '{module_name}' of '{path}': {exc}") from exc
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise ValueError(f"Module '{module_name}' has no attribute '{attr}' ({path})") from exc
    return obj
