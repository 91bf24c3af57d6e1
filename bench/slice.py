"""A slice of a suite by name: ``--only model=resnet18-cifar,seed=0,method=svd|prune-l1``.

Keys: model, dataset, seed, method, target; several values of one key are
joined with ``|``. A model or dataset matches its label or its name, a method
its label (``svd[rank_selection=global]``) or its registered name (all its
entries), a target its label (``macs<=0.5``, ``dense`` for the reference row)
or ``macs=0.5``. Unknown keys and values that match no cell are errors that
list what is allowed.

A slice is a sub-suite: the same lists, filtered, so its cells have the same
ids as in the whole suite and a later run of the whole suite reuses them. The
sub-suite keeps the whole suite's hash and knows its slice text, which runs
store in the manifest and in each record (``slice``).
"""

from __future__ import annotations

from collections.abc import Iterable

from bench.cells import Cell, expand, method_label
from bench.registry import unknown_message
from bench.suite import MethodSpec, Suite

SLICE_KEYS = ("model", "dataset", "seed", "method", "target")


class SliceError(ValueError):
    """An ``--only`` filter that names an unknown key or a value no cell has."""


def _target_names(target: dict[str, float] | None, label: str) -> set[str]:
    if target is None:
        return {label}
    (metric, ratio), = target.items()
    return {label, f"{metric}={ratio:g}", f"{metric}={ratio}"}


def cell_names(cell: Cell) -> dict[str, set[str]]:
    """Every name under which a cell can be selected, per key."""
    return {
        "model": {cell.model.display, cell.model.name},
        "dataset": {cell.dataset.display, cell.dataset.name},
        "seed": {str(cell.seed)},
        "method": {cell.method_label, cell.method},
        "target": _target_names(cell.target, cell.target_label),
    }


def parse_slice(text: str, cells: Iterable[Cell]) -> dict[str, tuple[str, ...]]:
    """``key=v1|v2,key=v`` -> {key: values}, checked against the suite's cells."""
    cells = list(cells)
    known: dict[str, set[str]] = {k: set() for k in SLICE_KEYS}
    for c in cells:
        for key, names in cell_names(c).items():
            known[key] |= names
    out: dict[str, tuple[str, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not value.strip():
            raise SliceError(f"--only: '{part}' is not key=value (keys: {', '.join(SLICE_KEYS)};"
                             " several values with |, e.g. method=svd|prune-l1)")
        if key not in SLICE_KEYS:
            raise SliceError("--only: " + unknown_message("key", key, list(SLICE_KEYS)))
        if key in out:
            raise SliceError(f"--only: key '{key}' given twice; join its values with |")
        values = tuple(v.strip() for v in value.split("|") if v.strip())
        for v in values:
            if v not in known[key]:
                raise SliceError(f"--only: {key}: " + unknown_message(
                    f"{key} in this suite", v, sorted(known[key])))
        out[key] = values
    if not out:
        raise SliceError(f"--only: empty filter (keys: {', '.join(SLICE_KEYS)})")
    return out


def matches(cell: Cell, filters: dict[str, tuple[str, ...]]) -> bool:
    names = cell_names(cell)
    return all(names[key] & set(values) for key, values in filters.items())


def slice_text(filters: dict[str, tuple[str, ...]]) -> str:
    return ",".join(f"{k}={'|'.join(v)}" for k, v in filters.items())


def slice_suite(suite: Suite, text: str) -> Suite:
    """The sub-suite holding exactly the cells of ``suite`` that ``text`` selects."""
    full = expand(suite)
    filters = parse_slice(text, full)
    wanted = {c.id for c in full if matches(c, filters)}
    if not wanted:
        raise SliceError(f"--only {slice_text(filters)}: no cell of suite '{suite.name}' has all "
                         "of these (each key narrows the others)")
    keep_cells = [c for c in full if c.id in wanted]

    def kept(attr: str) -> set[str]:
        return {getattr(c, attr).model_dump_json() for c in keep_cells}

    models, datasets = kept("model"), kept("dataset")
    methods: list[MethodSpec] = []
    for spec in suite.methods:
        for params in spec.param_sets():
            label = method_label(spec.name, spec.label, params, sorted(spec.grid))
            if not any(c.method == spec.name and c.method_label == label for c in keep_cells):
                continue
            grid = {k: [params[k]] for k in spec.grid}  # one combination, same label
            base = {k: v for k, v in params.items() if k not in spec.grid}
            targets = spec.targets
            if targets is not None:
                targets = [t for t in targets if any(c.target == t for c in keep_cells)]
            methods.append(MethodSpec(name=spec.name, label=spec.label, params=base, grid=grid,
                                      targets=targets))
    sub = suite.model_copy(update={
        "models": [m for m in suite.models if m.model_dump_json() in models],
        "datasets": [d for d in suite.datasets if d.model_dump_json() in datasets],
        "seeds": sorted({c.seed for c in keep_cells}),
        "methods": methods,
        "targets": [t for t in suite.targets if any(c.target == t for c in keep_cells)],
    })
    sub._slice = slice_text(filters)
    sub._full_hash = suite.hash()
    sub._full_suite = suite.full_suite
    got = {c.id for c in expand(sub)}
    if got != wanted:  # a combination the lists cannot express (e.g. a method's own targets)
        raise SliceError(f"--only {sub._slice}: this combination of values cannot be run as one "
                         "slice; give fewer keys or run two slices")
    return sub

