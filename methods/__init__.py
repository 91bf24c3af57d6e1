"""In-tree method plugins.

Each is declared in pyproject.toml under the ``lowrank_bench.methods``
entry-point group, like any third-party plugin, and imported only when used;
importing this package imports none of them.
"""
