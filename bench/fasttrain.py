"""The device-resident training loop: chosen on CUDA, runnable on any device.

The host loop (:func:`bench.train.train`) slices uint8 batches on the CPU,
augments and normalises them there, copies each batch to the device and reads
the loss and the correct count back after every step, which stalls a GPU on
every step. This loop computes the same thing with the data on the device:

- each split is moved to the device once, as uint8 (CIFAR-10: 150 MB);
- the shuffle, the papers' augmentation (random crop with zero padding and a
  horizontal flip, one offset pair and one flip per sample) and the
  normalisation are done on the device, in batch, drawing from a generator on
  the device seeded like the host loop's (on the CPU the draws are the host
  loop's own, so the two loops see identical batches);
- bf16 autocast on CUDA (``precision: auto``; ``fp32`` keeps full precision);
- channels_last for models with convolutions (converted back afterwards, so
  measurement sees the model as it was);
- loss, accuracy and a non-finite flag accumulate on the device and are read
  once per epoch (a non-finite loss stops training at the end of that epoch,
  naming its first step);
- ``torch.compile`` when the budget asks for it.

The optimizer, schedule, label smoothing and method hooks are the host loop's
(:func:`bench.train.make_optimizer` handed over in a :class:`LoopKit`, the same
warm-up + cosine rule), so a method trains the same way on either loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.data.base import DataBundle

PRECISIONS = ("auto", "bf16", "fp32")
LOOPS = ("auto", "device", "host")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on a CUDA device that supports it, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def use_device_loop(device: torch.device, loop: str = "auto", precision: str = "auto",
                    compile: bool = False) -> bool:
    """``auto``: the device loop on CUDA, or where bf16 or compile is asked for; else the
    host loop (so CPU records stay what they were)."""
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {', '.join(LOOPS)}; got {loop!r}")
    return loop == "device" or (loop == "auto" and (device.type == "cuda"
                                                    or precision == "bf16" or compile))


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


# -- data on the device ------------------------------------------------------------------------

def crop_flip(x: Tensor, g: torch.Generator, padding: int, flip: bool) -> Tensor:
    """Random crop with zero padding (one offset pair per sample), then a random h-flip.

    The draws (row offsets, column offsets, flip coin) and the gather are those of
    :func:`bench.data.base.random_crop_flip`; everything stays on ``x``'s device and
    the flip is a select, not a boolean-mask copy (which would sync with the host).
    """
    n, c, h, w = x.shape
    dev = x.device
    out = x
    if padding > 0:
        padded = F.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=dev)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=dev)
        rows = (dy.view(n, 1) + torch.arange(h, device=dev).view(1, h)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w, device=dev).view(1, w)).view(n, 1, 1, w)
        batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
        chans = torch.arange(c, device=dev).view(1, c, 1, 1)
        out = padded[batch, chans, rows, cols]
    if flip:
        mask = torch.rand(n, generator=g, device=dev) < 0.5
        out = torch.where(mask.view(n, 1, 1, 1), out.flip(-1), out)
    return out


class DeviceData:
    """A :class:`DataBundle`'s splits on one device, batched there."""

    def __init__(self, data: DataBundle, device: torch.device):
        self.data, self.device = data, device
        self.splits = {name: (getattr(data, name).x.to(device), getattr(data, name).y.to(device))
                       for name in ("train", "val", "test")}
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        aug = data.augment
        self.aug_spec: tuple[int, bool] | None = (
            None if aug is None or not hasattr(aug, "pad") else (int(aug.pad), bool(aug.flip)))

    def __len__(self) -> int:
        return int(self.splits["train"][1].shape[0])

    def normalize(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return (x - self.mean) / self.std

    def augment(self, x: Tensor, g: torch.Generator) -> Tensor:
        if self.data.augment is None:
            return x
        if self.aug_spec is not None:
            return crop_flip(x, g, *self.aug_spec)
        # an augmentation without a device form: run it on the CPU (its own generator draws)
        cpu_gen = torch.Generator().manual_seed(int(torch.randint(
            0, 2**31 - 1, (1,), generator=g, device=g.device).item()))
        return self.data.augment(x.cpu(), cpu_gen).to(self.device)

    def batches(self, split: str, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None,
                augment: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        x_all, y_all = self.splits[split]
        n = int(y_all.shape[0])
        if shuffle:
            order = torch.randperm(n, generator=generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            x = x_all[idx]
            if augment:
                x = self.augment(x, generator or self.generator(0))
            yield self.normalize(x), y_all[idx]

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)


def device_data(data: DataBundle, device: torch.device) -> DeviceData:
    """The bundle's splits on ``device``, moved once and kept with the bundle."""
    cache = data.__dict__.setdefault("_device_copies", {})
    key = str(device)
    if key not in cache:
        cache[key] = DeviceData(data, device)
    return cache[key]


# -- the loop ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoopKit:
    """What the loop shares with :mod:`bench.train` (its stats, optimizer, error), passed in
    by :func:`bench.train.train` so that this module does not import it back."""

    stats: Callable[[], Any]
    make_optimizer: Callable[..., torch.optim.Optimizer]
    non_finite: type[Exception]


def train_device(model: nn.Module, data: DataBundle, *, epochs: int, batch_size: int,
                 optimizer: str, lr: float, weight_decay: float, momentum: float = 0.9,
                 schedule: str = "cosine", warmup_epochs: int = 0,
                 label_smoothing: float = 0.0, augment: bool = True, seed: int = 0,
                 method: Any = None, ctx: Any = None, phase: str = "train", progress: Any = None,
                 precision: str = "auto", compile: bool = False,
                 compile_backend: str = "inductor", channels_last: bool | None = None,
                 steps: int | None = None, kit: LoopKit) -> Any:
    """Train in place with the host loop's mathematics; see the module docstring.

    ``steps`` runs exactly that many optimizer steps (the last epoch stops
    part-way), as in :func:`bench.train.train`.
    """
    stats = kit.stats()
    make_optimizer, NonFiniteLossError = kit.make_optimizer, kit.non_finite  # noqa: N806
    device = next(model.parameters()).device
    dd = device_data(data, device)
    steps_per_epoch = math.ceil(len(dd) / batch_size)
    total = epochs * steps_per_epoch if steps is None else max(0, int(steps))
    stats.batch_size, stats.steps_per_epoch = batch_size, steps_per_epoch
    stats.optimizer = stats.optimizer or {"name": optimizer, "lr": lr,
                                          "weight_decay": weight_decay, "schedule": schedule,
                                          "warmup_epochs": warmup_epochs}
    if total <= 0:
        return stats
    epochs = math.ceil(total / steps_per_epoch)
    prec = resolve_precision(precision, device)
    cl = has_conv(model) if channels_last is None else channels_last
    if cl:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model, backend=compile_backend) if compile else model
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay, momentum)
    warmup = round(warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = dd.generator(seed)
    if ctx is not None:
        ctx.phase = phase
        ctx.epochs = epochs
    start = time.perf_counter()
    step = 0
    try:
        for epoch in range(epochs):
            model.train()
            if ctx is not None:
                ctx.epoch = epoch
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            correct = torch.zeros((), dtype=torch.long, device=device)
            first_bad = torch.full((), -1, dtype=torch.long, device=device)
            seen = 0
            for x, y in dd.batches("train", batch_size, shuffle=True, generator=gen,
                                   augment=augment):
                if step >= total:
                    break
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                if method is not None and ctx is not None:
                    ctx.step = step
                    method.before_step(model, ctx)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
                    logits = forward(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
                    total_loss = loss
                    if method is not None and ctx is not None:
                        reg = method.regularizer(model, ctx)
                        if reg is not None:
                            total_loss = total_loss + reg
                bad = ~torch.isfinite(total_loss.detach())
                first_bad = torch.where(bad & (first_bad < 0), step, first_bad)
                opt.zero_grad(set_to_none=True)
                total_loss.backward()
                opt.step()
                sched.step()
                step += 1
                loss_sum += loss.detach().double() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
            bad_step = int(first_bad)  # the one read of the epoch (with the two below)
            if bad_step >= 0:
                raise NonFiniteLossError(f"non-finite loss at epoch {epoch}, step {bad_step} "
                                         f"({phase}, device loop, {prec})")
            row = {"epoch": epoch + 1, "loss": float(loss_sum) / max(seen, 1),
                   "train_acc": int(correct) / max(seen, 1)}
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


@torch.inference_mode()
def evaluate_device(model: nn.Module, data: DataBundle, split: str = "test",
                    batch_size: int = 512) -> dict[str, float]:
    """:func:`bench.train.evaluate` with the split on the device and one read at the end (fp32)."""
    model.eval()
    device = next(model.parameters()).device
    dd = device_data(data, device)
    cl = has_conv(model)
    n = 0
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    c1 = torch.zeros((), device=device, dtype=torch.long)
    c5 = torch.zeros((), device=device, dtype=torch.long)
    for x, y in dd.batches(split, batch_size):
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        c1 += (logits.argmax(1) == y).sum()
        if data.num_classes > 5:
            c5 += (logits.topk(5, dim=1).indices == y.unsqueeze(1)).any(1).sum()
        n += len(y)
    out = {"top1": int(c1) / n, "loss": float(loss_sum) / n}
    if data.num_classes > 5:
        out["top5"] = int(c5) / n
    return out
