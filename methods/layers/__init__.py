"""Layers and model surgery shared by the methods."""

from methods.layers.lowrank import (
    LowRankConv2d,
    LowRankLinear,
    dense_params,
    factorize,
    factorized_params,
    full_rank,
    truncated_svd,
    weight_matrix,
)
from methods.layers.surgery import (
    classifier_path,
    first_conv_path,
    layer_positions,
    select_layers,
    set_module,
)

__all__ = [
    "LowRankConv2d",
    "LowRankLinear",
    "classifier_path",
    "dense_params",
    "factorize",
    "factorized_params",
    "first_conv_path",
    "full_rank",
    "layer_positions",
    "select_layers",
    "set_module",
    "truncated_svd",
    "weight_matrix",
]
