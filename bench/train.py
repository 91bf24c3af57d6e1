"""The one training loop every method shares, and evaluation.

The harness owns the optimizer, schedule and data order so that every method
is trained and fine-tuned under the same budget; methods only add a loss term
and react to steps and epochs through their hooks.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.data.base import DataBundle
from bench.fasttrain import LoopKit, evaluate_device, train_device, use_device_loop
from bench.method import Method, MethodContext


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


@dataclass
class TrainStats:
    """What one call of :func:`train` did: the figures a budget ledger is built from.

    ``epochs`` is ``steps / steps_per_epoch`` (fractional when a run stops
    mid-epoch); ``optimizer`` holds the settings actually used.
    """

    seconds: float = 0.0
    epochs: float = 0
    steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    batch_size: int = 0
    steps_per_epoch: int = 0
    optimizer: dict[str, Any] = field(default_factory=dict)


def make_optimizer(params, name: str, lr: float, weight_decay: float,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer '{name}'. Allowed: sgd, adamw, adam")


def _patch_embedding(conv: nn.Conv2d) -> bool:
    """A patchify convolution (a ViT's patch embedding): kernel = stride > 1, no padding."""
    k, st, pad = conv.kernel_size, conv.stride, conv.padding
    return tuple(k) == tuple(st) and max(k) > 1 and pad in ((0, 0), "valid")


def host_channels_last(model: nn.Module) -> bool:
    """Whether the CPU paths (the host loop of :func:`train`, :func:`evaluate`) run ``model``
    in channels_last when not told: when it has a convolution other than a patch embedding.

    Measured with ``benchmarks/train_loop.py --data random --images 3000 --threads 1``
    (OMP_NUM_THREADS=1, 2-core shared host, load average 0.8-1.1, median img/s of 3-7
    interleaved repeats), default memory format -> channels_last:

    - fmnist ResNet (resnet10t, CIFAR stem, channels 16-128): training 333 -> 447 (+34%),
      evaluation (batch 512) 760 -> 1223 (+61%);
    - fmnist ViT (vit_tiny, patch 7, dim 96, depth 4; its one conv is the patch
      embedding): training 1123 -> 1063 (-5%), evaluation 2794 -> 2778 (-1%): no gain,
      so a model whose only convolutions are patch embeddings keeps the default format.

    The device loop keeps its own rule (any convolution; see :mod:`bench.fasttrain`).
    """
    return any(isinstance(m, nn.Conv2d) and not _patch_embedding(m) for m in model.modules())


LOOP_KIT = LoopKit(TrainStats, make_optimizer, NonFiniteLossError)  # for the device loop


def train(
    model: nn.Module,
    data: DataBundle,
    *,
    epochs: int,
    batch_size: int,
    optimizer: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    schedule: str = "cosine",
    warmup_epochs: int = 0,
    label_smoothing: float = 0.0,
    augment: bool = True,
    seed: int = 0,
    method: Method | None = None,
    ctx: MethodContext | None = None,
    phase: str = "train",
    progress=None,
    steps: int | None = None,
    precision: str = "auto",
    compile: bool = False,
    loop: str = "auto",
    channels_last: bool | None = None,
) -> TrainStats:
    """Train in place. ``method``/``ctx`` supply the hooks; ``progress(dict)`` gets epoch stats.

    ``steps`` (optional) runs exactly that many optimizer steps instead of
    ``epochs`` full epochs (the last epoch stops part-way); the schedule then
    spans those steps. The returned stats count every optimizer step taken.

    On CUDA (or with ``loop="device"``, bf16 or compile) this is
    :func:`bench.fasttrain.train_device`: the same mathematics with the data,
    augmentation and statistics on the device.

    ``channels_last``: train the model and its input batches in channels_last
    (converted back to contiguous afterwards, also on error, so measurement sees
    the model as it was). ``None`` chooses: the device loop's own rule there, and
    :func:`host_channels_last` on the host loop. ``True``/``False`` force it.
    """
    steps_per_epoch = math.ceil(len(data.train) / batch_size)
    total = epochs * steps_per_epoch if steps is None else max(0, int(steps))
    stats = TrainStats(batch_size=batch_size, steps_per_epoch=steps_per_epoch, optimizer={
        "name": optimizer, "lr": lr, "weight_decay": weight_decay, "schedule": schedule,
        "warmup_epochs": warmup_epochs})
    if total <= 0:
        return stats
    device = next(model.parameters()).device
    if use_device_loop(device, loop, precision, compile):
        return train_device(
            model, data, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
            weight_decay=weight_decay, momentum=momentum, schedule=schedule,
            warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, augment=augment,
            seed=seed, method=method, ctx=ctx, phase=phase, progress=progress, steps=total,
            precision=precision, compile=compile, channels_last=channels_last,
            kit=dataclasses.replace(LOOP_KIT, stats=lambda: stats))
    if precision == "bf16" or compile:
        raise ValueError("precision bf16 and compile need the device loop (loop: device or auto)")
    epochs = math.ceil(total / steps_per_epoch)
    cl = host_channels_last(model) if channels_last is None else channels_last
    if cl:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay, momentum)
    warmup = round(warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress_ = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress_))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    if ctx is not None:
        ctx.phase = phase  # type: ignore[assignment]
        ctx.epochs = epochs
    start = time.perf_counter()
    step = 0
    try:
        for epoch in range(epochs):
            model.train()
            if ctx is not None:
                ctx.epoch = epoch
            loss_sum, correct, seen = 0.0, 0, 0
            for x, y in data.batches("train", batch_size, shuffle=True, generator=gen,
                                     augment=augment):
                if step >= total:
                    break
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                if method is not None and ctx is not None:
                    ctx.step = step
                    method.before_step(model, ctx)
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
                total_loss = loss
                if method is not None and ctx is not None:
                    reg = method.regularizer(model, ctx)
                    if reg is not None:
                        total_loss = total_loss + reg
                if not torch.isfinite(total_loss):
                    raise NonFiniteLossError(f"non-finite loss {float(total_loss)} at epoch "
                                             f"{epoch}, step {step} ({phase})")
                opt.zero_grad(set_to_none=True)
                total_loss.backward()
                opt.step()
                sched.step()
                step += 1
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
            row = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1),
                   "train_acc": correct / max(seen, 1)}
            if method is not None and ctx is not None:
                method.on_epoch_end(model, ctx)
            stats.history.append(row)
            if progress is not None:
                progress(row)
    finally:
        if cl:
            model.to(memory_format=torch.contiguous_format)
    stats.seconds = time.perf_counter() - start
    stats.steps = step
    stats.epochs = step / steps_per_epoch
    return stats


def evaluate(model: nn.Module, data: DataBundle, split: str = "test",
             batch_size: int = 512, *, channels_last: bool | None = None) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy and mean loss.

    ``channels_last`` (CPU only): run the model and the batches in channels_last,
    converting the model back afterwards; ``None`` chooses by :func:`host_channels_last`.
    """
    device = next(model.parameters()).device
    if device.type == "cuda":
        return evaluate_device(model, data, split, batch_size)
    cl = host_channels_last(model) if channels_last is None else channels_last
    if not cl:
        return _evaluate_host(model, data, split, batch_size, False)
    model.to(memory_format=torch.channels_last)  # outside inference mode: parameters stay normal
    try:
        return _evaluate_host(model, data, split, batch_size, True)
    finally:
        model.to(memory_format=torch.contiguous_format)


@torch.inference_mode()
def _evaluate_host(model: nn.Module, data: DataBundle, split: str, batch_size: int,
                   channels_last: bool) -> dict[str, float]:
    device = next(model.parameters()).device
    model.eval()
    n, correct1, correct5, loss_sum = 0, 0, 0, 0.0
    for x, y in data.batches(split, batch_size):
        x, y = x.to(device), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct1 += int((logits.argmax(1) == y).sum())
        if data.num_classes > 5:
            top5 = logits.topk(5, dim=1).indices
            correct5 += int((top5 == y.unsqueeze(1)).any(1).sum())
        n += len(y)
    out = {"top1": correct1 / n, "loss": loss_sum / n}
    if data.num_classes > 5:
        out["top5"] = correct5 / n
    return out


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches, max_batches: int = 20) -> bool:
    """Re-estimate BatchNorm running statistics on training batches. True if any BN."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return False
    saved = {m: m.momentum for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    for i, (x, _) in enumerate(batches):
        if i >= max_batches:
            break
        model(x.to(device))
    for m, mom in saved.items():
        m.momentum = mom
    model.train(was_training)
    return True
