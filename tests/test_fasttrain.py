"""The device-resident loop: same draws, same mathematics as the host loop (tested on CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.data.base import random_crop_flip
from bench.data.images import ImageOptions, make_bundle
from bench.fasttrain import (
    crop_flip,
    device_data,
    evaluate_device,
    resolve_precision,
    train_device,
    use_device_loop,
)
from bench.train import LOOP_KIT, evaluate, train

SIZE, PAD = 12, 4


def dev_train(model, data, **kw):
    """The device loop called directly (bench.train.train calls it on CUDA)."""
    return train_device(model, data, kit=LOOP_KIT, **kw)


def position_images(n: int) -> torch.Tensor:
    """Channel 0 holds row + 1, channel 1 column + 1: a crop's offsets and flip can be read."""
    rows = torch.arange(1, SIZE + 1, dtype=torch.uint8).view(SIZE, 1).expand(SIZE, SIZE)
    img = torch.stack([rows, rows.t(), torch.zeros_like(rows)])
    return img.unsqueeze(0).repeat(n, 1, 1, 1)


def read_offsets(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dy, dx, flipped) per sample, from the centre pixels (never padding for pad 4)."""
    c = SIZE // 2
    r = out[:, 0, c, c].long() - 1
    flipped = (out[:, 1, c, c + 1].long() - out[:, 1, c, c].long()) < 0
    col = out[:, 1, c, c].long() - 1
    dy = r - c + PAD
    dx = torch.where(flipped, col - (SIZE - 1 - c) + PAD, col - c + PAD)
    return dy, dx, flipped


def frequencies(fn, seed: int, n: int = 20000) -> torch.Tensor:
    dy, dx, flipped = read_offsets(fn(position_images(n), torch.Generator().manual_seed(seed)))
    k = 2 * PAD + 1
    return torch.cat([torch.bincount(dy, minlength=k), torch.bincount(dx, minlength=k),
                      flipped.sum().view(1)]).double() / n


def test_device_augmentation_draws_like_the_host_one():
    host = random_crop_flip(padding=PAD, flip=True)

    def device(x, g):
        return crop_flip(x, g, PAD, True)

    x = position_images(64)
    # same generator, same device: the very same crops and flips
    assert torch.equal(device(x, torch.Generator().manual_seed(3)),
                       host(x, torch.Generator().manual_seed(3)))
    # other streams (as a CUDA generator's would be): the same distribution
    f_host, f_dev = frequencies(host, 0), frequencies(device, 1)
    uniform = torch.full((2 * (2 * PAD + 1),), 1 / (2 * PAD + 1), dtype=torch.float64)
    assert torch.allclose(f_host[:-1], uniform, atol=0.012)
    assert torch.allclose(f_dev[:-1], uniform, atol=0.012)
    assert abs(f_host[-1] - 0.5) < 0.015 and abs(f_dev[-1] - 0.5) < 0.015
    assert (f_host - f_dev).abs().max() < 0.015
    dy, dx, _ = read_offsets(device(position_images(4000), torch.Generator().manual_seed(5)))
    assert dy.min() == 0 and dy.max() == 2 * PAD and dx.min() == 0 and dx.max() == 2 * PAD


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_augmentation_has_the_host_distribution():
    def on_cuda(x, g):
        gen = torch.Generator(device="cuda").manual_seed(int(g.initial_seed()))
        return crop_flip(x.cuda(), gen, PAD, True).cpu()

    f_host = frequencies(random_crop_flip(padding=PAD, flip=True), 0)
    assert (f_host - frequencies(on_cuda, 0)).abs().max() < 0.015


def tiny_bundle(n_train: int = 96, augment: str = "cifar"):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    y = torch.arange(n_train) % 4
    tx = torch.randint(0, 256, (40, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return make_bundle("tiny", x, y, tx, torch.arange(40) % 4, num_classes=4,
                       opts=ImageOptions(val_fraction=0.25, augment=augment, pad=PAD),
                       standard_stats=None, info={})


BUDGET = dict(epochs=2, batch_size=16, optimizer="adamw", lr=3e-3, weight_decay=5e-4,
              warmup_epochs=1, label_smoothing=0.1, augment=True, seed=7)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 32), nn.ReLU(),
                         nn.Linear(32, 4))


def convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_device_loop_on_cpu_is_the_host_loop():
    data = tiny_bundle()
    a, b = mlp(), mlp()
    host = train(a, data, loop="host", **BUDGET)
    dev = train(b, data, loop="device", **BUDGET)
    assert dev.steps == host.steps == 2 * 5
    for ra, rb in zip(host.history, dev.history):
        assert ra["train_acc"] == rb["train_acc"]
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert evaluate(a, data, "test") == pytest.approx(evaluate_device(b, data, "test"))
    c, d = mlp(), mlp()  # a step budget that ends mid-epoch, as the budget ledger asks
    host = train(c, data, loop="host", **{**BUDGET, "steps": 7})
    dev = train(d, data, loop="device", **{**BUDGET, "steps": 7})
    assert dev.steps == host.steps == 7 and dev.epochs == host.epochs == 7 / 5
    assert dev.steps_per_epoch == 5 and dev.optimizer == host.optimizer
    for pc, pd in zip(c.parameters(), d.parameters()):
        assert torch.equal(pc, pd)


def test_channels_last_gives_the_contiguous_loss():
    data = tiny_bundle()
    a, b = convnet(), convnet()
    budget = {**BUDGET, "optimizer": "sgd", "lr": 0.05}  # Adam would magnify rounding of ~0 grads
    plain = dev_train(a, data, channels_last=False, **budget)
    last = dev_train(b, data, **budget)  # a convnet: channels_last by default
    for ra, rb in zip(plain.history, last.history):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4, abs=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-4)
        assert pb.is_contiguous()  # handed back as it came, for measurement


def test_bf16_autocast_trains_and_compile_gives_the_same_loss():
    data = tiny_bundle()
    a = mlp()
    ref = dev_train(a, data, precision="fp32", **BUDGET)
    b = mlp()
    bf = dev_train(b, data, precision="bf16", **BUDGET)
    assert bf.history[-1]["loss"] == pytest.approx(ref.history[-1]["loss"], rel=0.05)
    assert all(p.dtype == torch.float32 for p in b.parameters())  # master weights stay fp32
    c = mlp()
    compiled = dev_train(c, data, precision="fp32", compile=True, compile_backend="eager",
                            **BUDGET)
    assert compiled.history[-1]["loss"] == pytest.approx(ref.history[-1]["loss"], rel=1e-5)


def test_precision_and_loop_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("fp32", cuda) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", cpu)
    assert use_device_loop(cuda) and not use_device_loop(cpu)
    assert use_device_loop(cpu, precision="bf16") and use_device_loop(cpu, "device")
    assert not use_device_loop(cuda, "host")


def test_a_non_finite_loss_stops_at_the_end_of_the_epoch():
    from bench.train import NonFiniteLossError

    data = tiny_bundle()
    model = mlp()
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="epoch 0, step 0"):
        dev_train(model, data, **BUDGET)


def test_device_data_is_uint8_and_moved_once():
    data = tiny_bundle()
    dd = device_data(data, torch.device("cpu"))
    assert dd.splits["train"][0].dtype == torch.uint8
    assert device_data(data, torch.device("cpu")) is dd
    x, y = next(dd.batches("train", 8))
    hx, hy = next(data.batches("train", 8))
    assert torch.equal(x, hx) and torch.equal(y, hy)


def test_precision_is_chosen_in_the_suite_and_recorded(tiny_suite, write_suite, tmp_path):
    import json

    from bench.cli import main

    tiny_suite["train"]["precision"] = "bf16"  # on a CPU this selects the device loop
    tiny_suite["finetune"]["precision"] = "fp32"
    results = tmp_path / "results"
    assert main(["run", str(write_suite(tiny_suite)), "--results", str(results)]) == 0
    records = [json.loads(p.read_text()) for p in results.glob("cells/*.json")]
    assert len(records) == 2
    for r in records:
        assert r["precision"] == {"train": "bf16", "train_loop": "device",
                                  "finetune": "fp32", "finetune_loop": "host"}
        assert r["cell"]["train"]["precision"] == "bf16"
    tiny_suite["train"]["precision"] = "fp32"  # another precision is another cell
    tiny_suite["finetune"].pop("precision")
    from bench.cells import expand
    from bench.suite import load_suite

    ids = {c.id for c in expand(load_suite(write_suite(tiny_suite, "fp32.yaml"))[0])}
    assert not ids & {r["cell_id"] for r in records}
    with pytest.raises(Exception, match="precision bf16 and compile need loop: device or auto"):
        from bench.suite import TrainBudget

        TrainBudget(precision="bf16", loop="host")
