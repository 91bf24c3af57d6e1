"""results/<suite>/manifest.json: what a suite promised, so reports need only records.

The run writes it when it starts (and `lowrank-bench report` refreshes it
before rendering): the suite's name, hash and description, every expected
cell, and per method name its kind, description and whether it is the
reference row. A report reads it to show cells that have no record yet
("not run"), to find the reference row and to describe methods, without
expanding the suite or importing a single method.

Only `write_manifest` knows about suites and methods (imported when it is
called); `Manifest` and `read_manifest` depend on pydantic alone.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.atomic import atomic_write_bytes

MANIFEST_VERSION = 1
FILENAME = "manifest.json"
REFERENCE_METHODS = ("dense",)  # the registered name(s) whose row is the reference


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ExpectedCell(_Open):
    cell_id: str
    model: str
    dataset: str
    seed: int
    method: str = Field(description="label in the suite")
    method_name: str
    params: dict[str, Any] = Field(default_factory=dict)
    target: dict[str, float] | None = None
    target_label: str = "dense"
    recovery_epochs: int | None = Field(default=None, description="the cell's recovery budget "
                                        "(fine-tune epochs) when the suite has that axis")


class MethodInfo(_Open):
    kind: Literal["post", "train", ""] = ""
    description: str = ""
    reference: bool = False


class Manifest(_Open):
    manifest_version: Literal[1] = MANIFEST_VERSION
    suite: str
    suite_hash: str
    description: str = ""
    data_note: str = ""
    example: bool = Field(default=False, description="a toy suite: kept out of headline rankings")
    targets: list[str] = Field(default_factory=list, description="target labels in suite order")
    seeds: list[int] = Field(default_factory=list)
    recovery_epochs: list[int] = Field(default_factory=list,
                                       description="recovery budgets (empty: one fine-tune)")
    lr_grid: list[float] = Field(default_factory=list, description="recovery lrs tuned per row")
    cells: list[ExpectedCell] = Field(default_factory=list)
    methods: dict[str, MethodInfo] = Field(default_factory=dict)
    created: str | None = None

    def reference_names(self) -> set[str]:
        return {name for name, info in self.methods.items() if info.reference}

    def kind(self, method_name: str) -> str:
        info = self.methods.get(method_name)
        return info.kind if info else ""


def _target_label(metric: str, ratio: float) -> str:
    from bench.method import Target

    return Target(metric, ratio).label  # type: ignore[arg-type]


def build_manifest(suite: Any) -> Manifest:
    """The manifest of a validated `bench.suite.Suite` (expands it, imports its methods)."""
    from bench.cells import expand
    from bench.plugins import get_method

    cells = expand(suite)
    methods: dict[str, MethodInfo] = {}
    for spec in suite.methods:
        cls = get_method(spec.name)
        desc = getattr(cls, "description", "") or (cls.__doc__ or "").strip().split("\n")[0]
        methods[spec.name] = MethodInfo(
            kind=str(getattr(cls, "kind", "")), description=desc,
            reference=bool(getattr(cls, "reference", spec.name in REFERENCE_METHODS)))
    return Manifest(
        suite=suite.name, suite_hash=suite.hash(), description=suite.description,
        data_note=suite.data_note or "", example=bool(getattr(suite, "example", False)),
        targets=[_target_label(k, v) for t in suite.targets for k, v in t.items()],
        seeds=sorted({c.seed for c in cells}),
        **({"recovery_epochs": list(suite.recovery.epochs),
            "lr_grid": list(suite.recovery.lr_grid)} if suite.recovery is not None else {}),
        cells=[ExpectedCell(cell_id=c.id, model=c.model.display, dataset=c.dataset.display,
                            seed=c.seed, method=c.method_label, method_name=c.method,
                            params=c.params, target=c.target, target_label=c.target_label,
                            **({"recovery_epochs": c.recovery_epochs}
                               if c.recovery is not None else {}))
               for c in cells],
        methods=methods,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


def write_manifest(suite: Any, results_dir: str | Path) -> Path:
    """Write results_dir/manifest.json for `suite` atomically; returns its path.

    The file is rewritten only when its content (everything but the date)
    changes, so rendering a report twice leaves it untouched.
    """
    path = Path(results_dir) / FILENAME
    new = build_manifest(suite)
    try:
        old = read_manifest(results_dir)
    except (FileNotFoundError, ManifestError):
        old = None
    if old is not None and old.model_dump(exclude={"created"}) == new.model_dump(
            exclude={"created"}):
        return path
    atomic_write_bytes(path, json.dumps(new.model_dump(mode="json"), indent=1,
                                        sort_keys=False).encode())
    return path


def read_manifest(results_dir: str | Path) -> Manifest:
    """The manifest in results_dir; FileNotFoundError when the suite never ran or rendered."""
    path = Path(results_dir) / FILENAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: it is written when the suite runs "
            "(lowrank-bench run) or by lowrank-bench report")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not readable JSON ({exc})") from None
    version = raw.get("manifest_version") if isinstance(raw, dict) else None
    if version != MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest_version {version!r} is not supported "
                            f"(this lowrank-bench reads {MANIFEST_VERSION}); rerun "
                            "lowrank-bench report to rewrite it")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ManifestError(f"{path}: invalid manifest: {problems}") from None
