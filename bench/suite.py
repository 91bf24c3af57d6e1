"""Suites as data: a YAML file validated by pydantic and expanded into cells.

Every error names the file, the field, the bad value and what is allowed, and
is raised before any compute starts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from bench.registry import UnknownNameError, unknown_message

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


def _parse_target(t: dict[str, float]) -> dict[str, float]:
    if len(t) != 1:
        raise ValueError(f"a target has exactly one key, 'params' or 'macs'; got {t}")
    (metric, ratio), = t.items()
    if metric not in ("params", "macs"):
        raise ValueError(unknown_message("target metric", metric, ["params", "macs"]))
    if not 0 < float(ratio) <= 1:
        raise ValueError(f"target ratio must be in (0, 1]; got {metric}: {ratio}")
    return {metric: float(ratio)}


TargetDict = Annotated[dict[str, float], AfterValidator(_parse_target)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(Strict):
    name: str = Field(description="registered dataset name (digits, fashion-mnist, ...)")
    options: dict[str, Any] = Field(default_factory=dict, description="loader options")
    label: str | None = Field(default=None, description="name shown in reports")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from bench.data import DATASETS

        if v not in DATASETS:
            raise ValueError(unknown_message("dataset", v, DATASETS.names()))
        return v

    @property
    def display(self) -> str:
        return self.label or self.name


class ModelSpec(Strict):
    name: str = Field(description="a built-in (mlp) or any timm model name")
    label: str | None = Field(default=None, description="name shown in reports")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to the builder")
    stem: Literal["default", "cifar"] = Field(
        default="default", description="'cifar': 3x3 stride-1 first conv, no max-pool")
    checkpoint: str | None = Field(default=None, description="local pretrained state_dict")
    seeds: list[int] | None = Field(
        default=None, min_length=1,
        description="this model's seeds, instead of the suite's (e.g. fewer for a costly model)")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from bench.models import is_known_model, model_names_message

        if not is_known_model(v):
            raise ValueError(model_names_message(v))
        return v

    @property
    def display(self) -> str:
        return self.label or self.name


class TrainBudget(Strict):
    epochs: int = Field(default=10, ge=0)
    batch_size: int = Field(default=64, ge=1)
    optimizer: Literal["sgd", "adamw", "adam"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = Field(default=0, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    augment: bool = True
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="auto: bf16 autocast on CUDA, fp32 elsewhere")
    compile: bool = Field(default=False, description="torch.compile the model for training")
    loop: Literal["auto", "device", "host"] = Field(
        default="auto", description="auto: the device-resident loop on CUDA, else host batches")

    @model_validator(mode="after")
    def _loop_can_do_it(self) -> TrainBudget:
        if self.loop == "host" and (self.precision == "bf16" or self.compile):
            raise ValueError("loop: host trains in fp32 without compile; precision bf16 and "
                             "compile need loop: device or auto")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # fields added later are left out at their default, so existing cell ids stay valid
        out = handler(self)
        for name, default in _LATER_DEFAULTS.items():
            if out.get(name, default) == default:
                out.pop(name, None)
        return out


_LATER_DEFAULTS = {"precision": "auto", "compile": False, "loop": "auto"}


def _positive_sizes(sizes: tuple[int, ...]) -> tuple[int, ...]:
    bad = [b for b in sizes if b < 1]
    if bad:
        raise ValueError(f"latency batch sizes must be >= 1; got {bad[0]}")
    if not sizes:
        raise ValueError("give at least one latency batch size")
    return sizes


RUNTIMES = ("eager", "compile", "onnxruntime")
Runtime = Literal["eager", "compile", "onnxruntime"]


def _runtimes(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        raise ValueError("give at least 'eager' (the default is [eager])")
    if "eager" not in values:
        raise ValueError(f"{list(values)} leaves out 'eager'; the eager paired "
                         "timing is always measured and is what the other runtimes are "
                         "compared with, so list it too, e.g. [eager, "
                         f"{', '.join(values)}]")
    # one canonical order: the same set of runtimes gives the same cell id
    return tuple(r for r in RUNTIMES if r in values)


class LatencySpec(Strict):
    batch_sizes: Annotated[tuple[int, ...], AfterValidator(_positive_sizes)] = (1, 64)
    threads: int = Field(default=1, ge=1, description="CPU threads used for timing")
    warmup: int = Field(default=10, ge=0)
    min_runs: int = Field(default=30, ge=1)
    min_seconds: float = Field(default=0.5, ge=0)
    cuda: Literal["auto", "off"] = "auto"
    max_runs: int = Field(default=10_000, ge=1, description="cap on timed runs per measurement")
    channels_last: bool = Field(
        default=False, description="also time a channels_last copy (image inputs), separately")
    compile: bool = Field(
        default=False, description="also time a torch.compile copy, recorded separately")
    compile_backend: str = Field(default="inductor", description="torch.compile backend")
    paired_rounds: int = Field(
        default=20, ge=3, description="most rounds of the paired timing against the dense "
        "reference (alternating ABBA); the speedup interval is a bootstrap over ABBA blocks")
    paired_min_rounds: int = Field(
        default=8, ge=2, description="rounds before the paired timing may stop early")
    paired_target_rel: float | None = Field(
        default=0.03, gt=0, description="stop a batch size's paired rounds once the interval "
        "half-width is within this fraction of the median (null: always paired_rounds)")
    paired_floor_rel: float = Field(
        default=0.02, ge=0,  # = bench.measure.paired.DEFAULT_FLOOR_REL
        description="resolution floor added in quadrature to the interval: "
        "the relative error an A/A pair keeps on this machine whatever the rounds")
    paired_calls: int = Field(default=5, ge=1, description="timed calls per model in a round "
                              "(the round's figure is their median)")
    runtimes: Annotated[tuple[Runtime, ...], AfterValidator(_runtimes)] = Field(
        default=("eager",), description="deployment runtimes timed paired against the dense "
        "reference prepared the same way: eager (always), compile (torch.compile, inductor), "
        "onnxruntime (torch.onnx export, CPUExecutionProvider)")
    ort_graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="onnxruntime graph optimization level (all: ORT_ENABLE_ALL)")

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # fields added later are left out at their default, so existing cell ids stay valid
        out = handler(self)
        for name, default in _LATER_LATENCY_DEFAULTS.items():
            value = out.get(name, default)
            if (list(value) if isinstance(value, tuple) else value) == default:
                out.pop(name, None)
        return out


_LATER_LATENCY_DEFAULTS: dict[str, Any] = {"runtimes": ["eager"], "ort_graph_optimization": "all"}


def _sorted_unique_epochs(values: list[int]) -> list[int]:
    if len(set(values)) != len(values):
        raise ValueError(f"recovery budgets must differ from each other; got {values}")
    return sorted(values)


def _unique_lrs(values: list[float]) -> list[float]:
    if len(set(values)) != len(values):
        raise ValueError(f"learning rates in the grid must differ from each other; got {values}")
    return values


class RecoverySpec(Strict):
    """Recovery (fine-tune) budgets as an axis, with an equal lr-tuning budget for every row.

    Each budget in ``epochs`` is its own comparison: every row gets the train budget
    plus that many fine-tune epochs (the other fine-tune settings come from
    ``finetune``). Every row's recovery lr is chosen from ``lr_grid`` on the
    validation split at the largest budget and reused for the smaller ones: on every
    seed (``lr_chosen_on: each-seed``), or on the first seed of each model and reused for
    its other seeds (``first-seed``: about 30% fewer recovery epochs with two lrs and
    budgets 1 and 3; the other seeds of a row wait for the first seed's record).
    """

    epochs: Annotated[list[Annotated[int, Field(ge=1)]],
                      AfterValidator(_sorted_unique_epochs)] = Field(
        min_length=1, description="recovery budgets in fine-tune epochs, e.g. [1, 5]")
    lr_grid: Annotated[list[Annotated[float, Field(gt=0)]], AfterValidator(_unique_lrs)] = Field(
        min_length=1, description="recovery learning rates every row is tuned over, e.g. "
        "[5.0e-4, 2.0e-3]; one value: no tuning")
    lr_chosen_on: Literal["each-seed", "first-seed"] = Field(
        default="each-seed", description="each-seed: every seed tunes its own recovery lr; "
        "first-seed: the first seed of each model tunes it and the other seeds reuse it")

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # lr_chosen_on came later: at its default it is left out, so suite hashes stay
        out = handler(self)
        if out.get("lr_chosen_on") == "each-seed":
            out.pop("lr_chosen_on")
        return out

    @property
    def tune_epochs(self) -> int:
        """The budget the lr is chosen at: the largest."""
        return max(self.epochs)


class MethodSpec(Strict):
    name: str = Field(description="registered method name or 'pkg.module:Class'")
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict,
                                       description="each combination becomes its own entry")
    targets: list[TargetDict] | None = Field(
        default=None, description="override the suite's targets for this method")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from bench.plugins import get_method

        try:
            get_method(v)
        except UnknownNameError as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _params_valid(self) -> MethodSpec:
        from bench.plugins import get_method

        cls = get_method(self.name)
        for combo in self.param_sets():
            try:
                cls.Params(**combo)
            except ValidationError as exc:
                allowed = ", ".join(cls.Params.model_fields) or "(none)"
                problems = "; ".join(
                    f"params.{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
                    for e in exc.errors())
                raise ValueError(
                    f"invalid parameters for method '{self.name}': {problems}. "
                    f"Parameters of '{self.name}': {allowed}") from None
        return self

    def param_sets(self) -> list[dict[str, Any]]:
        if not self.grid:
            return [dict(self.params)]
        keys = sorted(self.grid)
        return [{**self.params, **dict(zip(keys, values))}
                for values in itertools.product(*(self.grid[k] for k in keys))]


class Suite(Strict):
    name: str
    description: str = ""
    datasets: list[DatasetSpec] = Field(min_length=1)
    models: list[ModelSpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    targets: list[TargetDict] = Field(min_length=1)
    seeds: list[int] = Field(default=[0], min_length=1)
    train: TrainBudget = TrainBudget()
    finetune: TrainBudget = TrainBudget(epochs=2, lr=1e-4)
    latency: LatencySpec = LatencySpec()
    recovery: RecoverySpec | None = Field(
        default=None, description="several recovery budgets and an lr grid tuned per row "
        "(null: one fine-tune, the finetune block as it is)")
    data_note: str | None = Field(default=None, description="shown in the report header")
    _slice: str | None = PrivateAttr(default=None)  # set by bench.slice on a sub-suite
    _full_hash: str | None = PrivateAttr(default=None)
    _full_suite: Suite | None = PrivateAttr(default=None)  # the suite a slice was cut from

    @model_validator(mode="after")
    def _no_duplicate_methods(self) -> Suite:
        from bench.plugins import get_method

        seen: dict[str, int] = {}
        for i, spec in enumerate(self.methods):
            cls = get_method(spec.name)
            for combo in spec.param_sets():  # compared with defaults filled in, like cell ids
                full = cls.Params(**combo).model_dump(mode="json")
                key = json.dumps([spec.name, full], sort_keys=True, default=str)
                if key in seen:
                    raise ValueError(
                        f"methods[{i}]: method '{spec.name}' with params {combo} is already "
                        f"listed as methods[{seen[key]}]; each (name, params) once (give a "
                        "grid or different params to compare variants)")
                seen[key] = i
        return self

    @model_validator(mode="after")
    def _recovery_owns_epochs_and_lr(self) -> Suite:
        if self.recovery is None:
            return self
        clash = [f for f in ("epochs", "lr") if f in self.finetune.model_fields_set]
        if clash:
            names = " and ".join(f"finetune.{f}" for f in clash)
            raise ValueError(
                f"{names}: set by recovery (recovery.epochs: the budgets, recovery.lr_grid: "
                f"the learning rates tuned per row); remove {'them' if len(clash) > 1 else 'it'}"
                " from finetune, or drop recovery for a single fine-tune")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # recovery was added later: a suite without it keeps its hash
        out = handler(self)
        if out.get("recovery", 0) is None:
            out.pop("recovery")
        return out

    def hash(self) -> str:
        if self._full_hash is not None:  # a slice keeps the hash of the suite it slices
            return self._full_hash
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def full_suite(self) -> Suite:
        """The whole suite: itself, or the one this slice was cut from (what a report promises)."""
        return self._full_suite if self._full_suite is not None else self

    @property
    def slice(self) -> str | None:
        """The ``--only`` filter this suite holds (None: the whole suite)."""
        return self._slice


class SuiteError(ValueError):
    """A suite file is invalid; the message says where and how."""


def resolve_suite_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise SuiteError(f"Suite file '{p}' does not exist")
        return p
    candidate = SUITES_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        available = sorted(f.stem for f in SUITES_DIR.glob("*.yaml"))
        raise SuiteError(unknown_message("suite", str(name_or_path), available))
    return candidate


def read_suite_file(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a suite file, with ``include:`` resolved.

    ``include: other.yaml`` (relative to this file, or a suite name) starts from
    that suite; this file's keys override its keys, mappings merged key by key
    (``train: {epochs: 1}`` keeps the other training fields), lists replaced.
    The name is this file's (its ``name:`` or its file name), never the included one's.
    """
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise SuiteError(f"{path}: include cycle: {cycle}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite is a mapping with keys "
                         f"{', '.join(['include', *Suite.model_fields])}")
    include = raw.pop("include", None)
    raw.setdefault("name", path.stem)
    if include is None:
        return raw
    if not isinstance(include, str):
        raise SuiteError(f"{path}: include: a suite file or name; got {include!r}")
    candidate = path.parent / include
    try:
        base_path = candidate if candidate.is_file() else resolve_suite_path(include)
    except SuiteError as exc:
        raise SuiteError(f"{path}: include: {exc}") from None
    base = read_suite_file(base_path, (*_chain, path.resolve()))
    return _merge(base, raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_suite(name_or_path: str | Path, *, check_models: bool = True) -> tuple[Suite, Path]:
    """Read, validate and (``check_models``) build each model once on the meta device."""
    path = resolve_suite_path(name_or_path)
    raw = read_suite_file(path)
    try:
        suite = Suite(**raw)
    except ValidationError as exc:
        raise SuiteError(format_validation_error(path, exc, raw)) from None
    if check_models:
        problems = model_problems(suite)
        if problems:
            raise SuiteError("\n".join([f"{path}: invalid suite ({len(problems)} problem(s))",
                                         *(f"  {p}" for p in problems)]))
    return suite, path


# nominal (channels, image size, classes) per dataset, enough to build a model for checking
_NOMINAL_SHAPES = {"digits": (1, 8, 10), "fashion-mnist": (1, 28, 10),
                   "cifar10": (3, 32, 10), "cifar100": (3, 32, 100)}


def _nominal_shape(spec: DatasetSpec) -> tuple[int, int, int, bool]:
    """(in_chans, img_size, classes, exact): exact when the shape does not depend on files."""
    opts = spec.options
    if spec.name in _NOMINAL_SHAPES:
        chans, size, classes = _NOMINAL_SHAPES[spec.name]
        if spec.name == "cifar100" and opts.get("labels") == "coarse":
            classes = 20
        return chans, size, classes, True
    chans = int(opts.get("channels", 3)) if str(opts.get("channels", 3)).isdigit() else 3
    size = opts.get("img_size")
    exact = isinstance(size, int) and size > 0
    return chans, int(size) if exact else 32, 10, exact


def build_on_meta(spec: Any, num_classes: int, in_chans: int, img_size: int) -> Any:
    """Build a model of ``spec`` (a ModelSpec) without allocating or initialising weights."""
    import torch

    from bench.models import build_model

    with torch.device("meta"):
        return build_model(spec.name, num_classes, in_chans, img_size, kwargs=spec.kwargs,
                           stem=None if spec.stem == "default" else spec.stem)


def model_problems(suite: Suite) -> list[str]:
    """Build each model once per dataset shape on the meta device (no memory, no init).

    A kwarg the model's constructor rejects is reported as ``models[i].kwargs``
    with the value; with a dataset whose image size comes from its files, only
    rejected arguments are reported (other errors could be the stand-in size's).
    """
    problems = []
    for i, model in enumerate(suite.models):
        for spec in suite.datasets:
            chans, size, classes, exact = _nominal_shape(spec)
            try:
                build_on_meta(model, classes, chans, size)
            except Exception as exc:
                if not exact and not isinstance(exc, TypeError):
                    continue
                field = ("stem" if "stem" in str(exc) else
                         "kwargs" if isinstance(exc, TypeError) or model.kwargs else "name")
                shown = {"stem": model.stem, "kwargs": model.kwargs}.get(field, model.name)
                problems.append(
                    f"models[{i}].{field}: '{model.name}' cannot be built with these arguments "
                    f"for dataset '{spec.display}' ({chans}x{size}x{size}, {classes} classes): "
                    f"{type(exc).__name__}: {exc} (got {shown!r})")
                break
    return problems


def format_validation_error(path: Path, exc: ValidationError, raw: dict) -> str:
    lines = [f"{path}: invalid suite ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        loc = err["loc"]
        where = _loc_str(loc)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_fields(loc[:-1])
            msg = unknown_message("field", str(loc[-1]), allowed)
            lines.append(f"  {where}: {msg}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
        lines.append(f"  {where}: {msg}{shown}" if loc else f"  {msg}")
    return "\n".join(lines)


def _loc_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


_LIST_ITEMS = {"datasets": DatasetSpec, "models": ModelSpec, "methods": MethodSpec}
_SUBMODELS = {"train": TrainBudget, "finetune": TrainBudget, "latency": LatencySpec,
              "recovery": RecoverySpec}


def _allowed_fields(loc: tuple) -> list[str]:
    named = [p for p in loc if isinstance(p, str)]
    if not named:
        return list(Suite.model_fields)
    cls = _LIST_ITEMS.get(named[0]) or _SUBMODELS.get(named[0])
    return list(cls.model_fields) if cls else []
