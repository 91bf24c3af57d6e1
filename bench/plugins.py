"""Where methods come from: the ``lowrank_bench.methods`` entry-point group, or an import path.

In-tree methods and third-party plugins are declared the same way (an entry
point ``name = "package.module:Class"``) and registered *lazily*: listing the
names imports nothing, and a method's module is imported the first time it is
used. ``@register_method`` still works for classes defined elsewhere (tests,
notebooks); an entry-point class does not need it.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from bench.method import Method
from bench.registry import Registry, load_import_path

ENTRY_POINT_GROUP = "lowrank_bench.methods"
METHODS: Registry[type[Method]] = Registry("method")
_log = logging.getLogger("lowrank_bench")
_discovered = False


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a Method subclass under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{cls!r} is not a subclass of bench.Method")
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} must set the class attribute 'name'")
    METHODS.register(cls.name, cls, origin=f"{cls.__module__}:{cls.__qualname__}")
    return cls


def discover() -> None:
    """Register every entry point of the group once, as a lazy 'module:Class' entry."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in METHODS:
            METHODS.register(ep.name, ep.value, origin=ep.value)


def _checked(name: str, cls: object, where: str) -> type[Method]:
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ValueError(f"{where} is not a subclass of bench.Method")
    if ":" not in name and cls.name != name:
        raise ValueError(f"method '{name}' points to {where}, whose name is "
                         f"'{getattr(cls, 'name', '')}'; they must agree")
    return cls


def get_method(name: str) -> type[Method]:
    """A method class by registered name or by 'pkg.module:Class' import path."""
    if ":" in name:
        return _checked(name, load_import_path(name), f"'{name}'")
    discover()
    return _checked(name, METHODS.get(name), f"entry point '{name}'")


def method_names() -> list[str]:
    discover()
    return METHODS.names()
