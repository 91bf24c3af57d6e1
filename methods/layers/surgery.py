"""Model surgery shared by all methods: find the layers to compress, swap modules.

Selection is by module path with fnmatch-style include/exclude patterns. By
default the first conv and the classifier stay dense (the usual practice in
the papers: they are small and accuracy-critical), and grouped/depthwise convs
are never selected.
"""

from __future__ import annotations

from fnmatch import fnmatch

from torch import nn

FACTORIZABLE = (nn.Linear, nn.Conv2d)


def classifier_path(model: nn.Module) -> str | None:
    """Module path of the classifier: timm's pretrained_cfg, else the last Linear."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    name = cfg.get("classifier") if isinstance(cfg, dict) else None
    if name:
        try:
            module = model.get_submodule(name)
            if isinstance(module, nn.Linear):
                return name
        except AttributeError:
            pass
    last = None
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = path
    return last


def first_conv_path(model: nn.Module) -> str | None:
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return path
    return None


def select_layers(model: nn.Module, include: list[str] | None = None,
                  exclude: list[str] | None = None, skip_first_conv: bool = True,
                  skip_classifier: bool = True,
                  types: tuple[type[nn.Module], ...] = FACTORIZABLE) -> dict[str, nn.Module]:
    """Path -> layer for every Linear/Conv2d a method may decompose."""
    skip: set[str] = set()
    if skip_first_conv and (p := first_conv_path(model)) is not None:
        skip.add(p)
    if skip_classifier and (p := classifier_path(model)) is not None:
        skip.add(p)
    chosen: dict[str, nn.Module] = {}
    for path, module in model.named_modules():
        if type(module) not in types or path in skip:
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            continue
        if include and not any(fnmatch(path, pat) for pat in include):
            continue
        if exclude and any(fnmatch(path, pat) for pat in exclude):
            continue
        chosen[path] = module
    return chosen


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, attr, new)


def probe_layers(model: nn.Module, layers: dict[str, nn.Module], input_shape: tuple[int, ...],
                 record) -> None:
    """One eval-mode forward on a zero sample, calling ``record(path, module, inp, out)``.

    The shared way methods learn what a layer sees per sample (positions,
    input shapes) without relying on module order matching call order.
    """
    import torch

    def hook_for(path: str):
        def hook(mod, inp, out) -> None:  # returns None: the output is never replaced
            record(path, mod, inp, out)
        return hook

    hooks = [layer.register_forward_hook(hook_for(path)) for path, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def layer_positions(model: nn.Module, layers: dict[str, nn.Module],
                    input_shape: tuple[int, ...]) -> dict[str, int]:
    """How many times each layer's weight is applied per sample (tokens or pixels).

    Found with one forward pass, so MAC estimates agree with what the model runs.
    """
    counts: dict[str, int] = {}

    def record(path, mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            counts[path] = counts.get(path, 0) + out.shape[-1] * out.shape[-2]
        else:
            counts[path] = counts.get(path, 0) + out[0].numel() // out.shape[-1]

    probe_layers(model, layers, input_shape, record)
    return counts
