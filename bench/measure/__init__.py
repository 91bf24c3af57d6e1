"""Measurements: params/MACs, latency, provenance."""

from bench.measure.counting import count_macs, count_params, measure_cost
from bench.measure.environment import environment
from bench.measure.latency import Latency, time_model

__all__ = ["Latency", "count_macs", "count_params", "environment", "measure_cost", "time_model"]
