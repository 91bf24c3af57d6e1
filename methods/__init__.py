"""In-tree method plugins. Importing this package registers them."""

from methods import dense, svd  # noqa: F401

__all__ = ["dense", "svd"]
