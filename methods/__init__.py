"""In-tree method plugins. Importing this package registers them."""

from methods import (  # noqa: F401
    accel,
    dense,
    dense_small,
    funnel,
    lorita,
    maestro,
    monarch,
    prune,
    svd,
)

__all__ = [
    "accel",
    "dense",
    "dense_small",
    "funnel",
    "lorita",
    "maestro",
    "monarch",
    "prune",
    "svd",
]
