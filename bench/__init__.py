"""lowrank-bench: a benchmark and leaderboard generator for network compression."""

# Before torch loads OpenMP: idle OpenMP threads sleep rather than spin (see bench.threads).
from bench.threads import configure_openmp_wait

configure_openmp_wait()

from bench.method import Cost, Method, MethodContext, NoParams, Target  # noqa: E402
from bench.plugins import get_method, method_names, register_method  # noqa: E402

__version__ = "0.1.0"
# Bump when a change to the harness changes results: it is part of every cell id.
HARNESS_VERSION = "3"



def compress(*args, **kwargs):  # noqa: D103 - documented in bench.api.compress
    from bench.api import compress as _compress

    return _compress(*args, **kwargs)


compress.__doc__ = "One-call compression of your own model; see bench.api.compress."

__all__ = [
    "compress",
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
