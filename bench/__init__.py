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


def time_against(*args, **kwargs):  # noqa: D103 - documented in bench.api.time_against
    from bench.api import time_against as _time_against

    return _time_against(*args, **kwargs)


time_against.__doc__ = """Paired CPU timing of a model against a reference under a runtime.

    bench.time_against(model, reference, example_input, runtime="onnxruntime",
                       batch_sizes=[1, 64], threads=1)

returns ``{"b1": entry, "b64": entry}`` (``entry["speedup"]``: median, ci_low,
ci_high, noisy) with the runtime's versions and settings in ``.info``;
runtime is "eager", "compile" or "onnxruntime". See bench.api.time_against.
"""

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
    "time_against",
]
