"""In-tree method plugins. Importing this package registers them."""

from methods import (  # noqa: F401
    dense,
    funnel,
    lorita,
    monarch,
    svd,
)

__all__ = ["dense", "funnel", "lorita", "monarch", "svd"]
