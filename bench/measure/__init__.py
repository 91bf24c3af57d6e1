"""Measurements: params/MACs (two counters), latency (alone and paired), memory, size.

``measure_deployable`` is the one front door the runner uses; the modules
below it each own one concern.
"""

from bench.measure.breakdown import profile_breakdown
from bench.measure.counting import count_macs, count_params, mac_report, measure_cost
from bench.measure.deploy import measure_deployable
from bench.measure.environment import environment
from bench.measure.latency import Latency, summarize, time_model
from bench.measure.memory import PeakRSS
from bench.measure.paired import time_paired
from bench.measure.size import safetensors_bytes

__all__ = [
    "Latency",
    "PeakRSS",
    "count_macs",
    "count_params",
    "environment",
    "mac_report",
    "measure_cost",
    "measure_deployable",
    "profile_breakdown",
    "safetensors_bytes",
    "summarize",
    "time_model",
    "time_paired",
]
