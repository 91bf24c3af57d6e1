"""Save and reload any deployable model: weights plus a JSON architecture description.

Compressed models differ from the architecture they came from (pruned layers
have fewer channels, factorized layers are new module types, attention blocks
have fewer heads), so a state_dict alone does not rebuild them. Saving records,
for every module path, its class and its plain attributes (ints, floats,
strings, bools, tuples, lists of those), and the shape of every parameter and
buffer. Loading builds the original architecture, then replays the
description over it: modules of another class are created empty and filled,
plain attributes are set, parameters and buffers are resized, and the
state_dict is loaded strictly. Nothing is unpickled: the file is a
``torch.save`` of tensors and a JSON string, loaded with ``weights_only=True``,
and only classes from an allow-list of packages may be named.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "lowrank-bench-model/1"
ALLOWED_PACKAGES = ("torch.nn", "timm", "methods", "bench")
_SKIP_ATTRS = {"training"}


class ArchitectureError(ValueError):
    """The description cannot be saved or replayed."""


def _encode(value: Any) -> Any:
    """JSON form of a plain attribute, or raise TypeError for anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    raise TypeError(type(value).__name__)


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_decode(v) for v in value["tuple"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _class_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve_class(name: str) -> type[nn.Module]:
    mod_name, _, qual = name.partition(":")
    if not any(mod_name == p or mod_name.startswith(p + ".") for p in ALLOWED_PACKAGES):
        raise ArchitectureError(f"class {name} is outside the allowed packages {ALLOWED_PACKAGES}")
    obj: Any = importlib.import_module(mod_name)
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ArchitectureError(f"{name} is not an nn.Module class")
    return obj


def describe(model: nn.Module) -> dict[str, Any]:
    """The architecture of ``model`` as JSON-able data (no weights)."""
    modules: dict[str, Any] = {}
    for path, module in model.named_modules():
        attrs: dict[str, Any] = {}
        for key, value in vars(module).items():
            if key.startswith("_") and key != "_reversed_padding_repeated_twice":
                continue
            if key in _SKIP_ATTRS:
                continue
            try:
                attrs[key] = _encode(value)
            except TypeError:
                continue  # functions, enums, ...: left as the base architecture has them
        modules[path] = {
            "class": _class_name(module),
            "attrs": attrs,
            "params": {k: (None if p is None else list(p.shape))
                       for k, p in module._parameters.items()},
            "buffers": {k: (None if b is None else list(b.shape))
                        for k, b in module._buffers.items()},
            "non_persistent": sorted(module._non_persistent_buffers_set),
            "children": list(module._modules.keys()),
        }
    return {"format": FORMAT, "modules": modules}


def _blank(cls: type[nn.Module]) -> nn.Module:
    """An instance of ``cls`` with nn.Module's state only; the description fills it."""
    obj = cls.__new__(cls)
    nn.Module.__init__(obj)
    return obj


def _set_child(root: nn.Module, path: str, child: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    parent._modules[attr] = child


def apply_description(base: nn.Module, arch: dict[str, Any]) -> nn.Module:
    """Reshape ``base`` (the original architecture) into the described one, in place."""
    if arch.get("format") != FORMAT:
        raise ArchitectureError(f"unknown architecture format {arch.get('format')!r}")
    mods = arch["modules"]
    root = base
    for path in sorted(mods, key=lambda p: (p.count(".") + (1 if p else 0), p)):
        spec = mods[path]
        try:
            module = root.get_submodule(path) if path else root
        except AttributeError:
            module = None
        if module is None or _class_name(module) != spec["class"]:
            module = _blank(_resolve_class(spec["class"]))
            if path:
                _set_child(root, path, module)
            else:
                root = module
        for key in list(module._modules):
            if key not in spec["children"]:
                del module._modules[key]
        for key, value in spec["attrs"].items():
            object.__setattr__(module, key, _decode(value))
        for key, shape in spec["params"].items():
            current = module._parameters.get(key)
            if shape is None:
                module._parameters[key] = None
            elif current is None or list(current.shape) != shape:
                module._parameters[key] = nn.Parameter(torch.empty(shape))
        for key in list(module._parameters):
            if key not in spec["params"]:
                del module._parameters[key]
        for key, shape in spec["buffers"].items():
            current = module._buffers.get(key)
            if shape is None:
                module._buffers[key] = None
            elif current is None or list(current.shape) != shape:
                dtype = current.dtype if current is not None else torch.float32
                module._buffers[key] = torch.empty(shape, dtype=dtype)
        module._non_persistent_buffers_set = set(spec["non_persistent"])
        for child in spec["children"]:
            if child not in module._modules:
                module._modules[child] = None  # created when its own path comes up
    missing = [p for p, m in root.named_modules(remove_duplicate=False) if m is None]
    if missing:
        raise ArchitectureError(f"modules left undescribed: {missing}")
    return root


def save_model(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write weights and architecture of ``model`` to ``path`` (a torch file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "state_dict": state,
                "architecture": json.dumps(describe(model)),
                "meta": json.dumps(meta or {})}, path)
    return path


def load_model(path: str | Path, build_base: Callable[[], nn.Module],
               map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved model: ``build_base`` makes the original, uncompressed architecture."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if payload.get("format") != FORMAT:
        raise ArchitectureError(f"{path} is not a {FORMAT} file")
    model = apply_description(build_base(), json.loads(payload["architecture"]))
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.eval()


def load_meta(path: str | Path) -> dict[str, Any]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return json.loads(payload.get("meta", "{}"))
