"""Where methods come from: in-tree, entry points, or an import path.

Lookup first makes sure every source has been loaded (the in-tree ``methods``
package, the ``lowrank_bench.methods`` entry-point group), so a plugin that
exists is never reported as unknown just because nobody imported it yet.
"""

from __future__ import annotations

import importlib
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
    METHODS.register(cls.name, cls, origin=f"{cls.__module__}.{cls.__qualname__}")
    return cls


def discover() -> None:
    """Load in-tree methods and entry-point plugins once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    importlib.import_module("methods")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in METHODS:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not break every run
            _log.warning("method plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        if ep.name not in METHODS:
            if getattr(cls, "name", "") != ep.name:
                raise ValueError(
                    f"entry point '{ep.name}' points to {ep.value}, whose name is "
                    f"'{getattr(cls, 'name', '')}'; they must agree"
                )
            register_method(cls)


def get_method(name: str) -> type[Method]:
    """A method class by registered name or by 'pkg.module:Class' import path."""
    if ":" in name:
        cls = load_import_path(name)
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise ValueError(f"'{name}' is not a subclass of bench.Method")
        return cls
    discover()
    return METHODS.get(name)


def method_names() -> list[str]:
    discover()
    return METHODS.names()
