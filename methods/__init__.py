"""In-tree method plugins. Importing this package registers them."""

from methods import (  # noqa: F401
    dense,
    lorita,
    svd,
)

__all__ = ["dense", "lorita", "svd"]
