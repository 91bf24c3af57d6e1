"""The host loop in channels_last: reproducible, close to contiguous, handed back as it came."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.data.images import ImageOptions, make_bundle
from bench.train import evaluate, host_channels_last, train

SIZE = 12
BUDGET = dict(epochs=2, batch_size=16, optimizer="adamw", lr=3e-3, weight_decay=5e-4,
              warmup_epochs=1, label_smoothing=0.1, augment=True, seed=7, loop="host")


def tiny_bundle(n_train: int = 64):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    tx = torch.randint(0, 256, (32, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return make_bundle("tiny", x, torch.arange(n_train) % 4, tx, torch.arange(32) % 4,
                       num_classes=4, opts=ImageOptions(val_fraction=0.25, augment="cifar", pad=2),
                       standard_stats=None, info={})


def convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def conv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


class Spy:
    """A method hook that records the memory format the model trains in (and can fail)."""

    def __init__(self, fail_at: int | None = None):
        self.formats: list[bool] = []
        self.fail_at = fail_at

    def before_step(self, model, ctx):
        w = conv_weights(model)[1]
        self.formats.append(w.is_contiguous(memory_format=torch.channels_last)
                            and not w.is_contiguous())
        if ctx.step == self.fail_at:
            raise RuntimeError("stop")

    def regularizer(self, model, ctx):
        return None

    def on_epoch_end(self, model, ctx):
        pass


class Ctx:
    phase = "train"
    epochs = epoch = step = 0


def test_channels_last_training_is_bit_reproducible_and_handed_back_contiguous():
    data = tiny_bundle()
    a, b = convnet(), convnet()
    spy = Spy()
    sa = train(a, data, channels_last=True, method=spy, ctx=Ctx(), **BUDGET)
    sb = train(b, data, channels_last=True, **BUDGET)
    assert sa.steps == sb.steps == 2 * 3
    assert spy.formats and all(spy.formats)  # it did train in channels_last
    assert sa.history == sb.history
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    for w in conv_weights(a):
        assert w.is_contiguous()


def test_channels_last_on_and_off_give_close_losses():
    data = tiny_bundle()
    one_step = {**BUDGET, "steps": 1, "optimizer": "sgd", "lr": 0.05}
    a, b = convnet(), convnet()
    plain = train(a, data, channels_last=False, **one_step)
    last = train(b, data, channels_last=True, **one_step)
    assert plain.history[0]["loss"] == pytest.approx(last.history[0]["loss"], rel=1e-4)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-4)
    assert evaluate(a, data, channels_last=False) == pytest.approx(
        evaluate(a, data, channels_last=True), rel=1e-4)


def test_the_model_is_handed_back_contiguous_on_error_and_after_evaluation():
    data = tiny_bundle()
    model = convnet()
    with pytest.raises(RuntimeError, match="stop"):
        train(model, data, channels_last=True, method=Spy(fail_at=2), ctx=Ctx(), **BUDGET)
    assert all(w.is_contiguous() for w in conv_weights(model))
    evaluate(model, data, channels_last=True)
    assert all(w.is_contiguous() and not w.is_inference() for w in conv_weights(model))
    train(model, data, **{**BUDGET, "steps": 1})  # parameters still trainable after evaluation


def test_auto_choice_is_convnets_but_not_a_lone_patch_embedding():
    assert host_channels_last(convnet())
    assert host_channels_last(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Flatten()))  # pointwise
    patchify = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Flatten(), nn.Linear(72, 4))
    assert not host_channels_last(patchify)  # a ViT's only conv: measured no faster
    assert not host_channels_last(nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 4)))
    spy = Spy()
    train(convnet(), tiny_bundle(), method=spy, ctx=Ctx(), **{**BUDGET, "steps": 1})
    assert spy.formats == [True]  # auto: a convnet trains in channels_last
