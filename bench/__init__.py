"""lowrank-bench: a benchmark and leaderboard generator for network compression."""

# Before torch loads OpenMP: idle OpenMP threads sleep rather than spin (see bench.threads).
from bench.threads import configure_openmp_wait

configure_openmp_wait()

from bench.method import Cost, Method, MethodContext, NoParams, Target  # noqa: E402
from bench.plugins import get_method, method_names, register_method  # noqa: E402

__version__ = "0.1.0"
# Bump when a change to the harness changes results: it is part of every cell id.
HARNESS_VERSION = "1"

__all__ = [
    "Cost",
    "HARNESS_VERSION",
    "Method",
    "MethodContext",
    "NoParams",
    "Target",
    "get_method",
    "method_names",
    "register_method",
]
