"""dense-small: narrower models of the same family, sized to the budget, trained from scratch."""

from __future__ import annotations

import json

import pytest
import torch

from bench.cli import main
from bench.measure import measure_cost
from bench.models import build_model
from methods.dense_small import width_overrides

FAMILIES = [
    ("mlp", {"hidden": [64, 32]}, (1, 8, 8)),
    ("vit_tiny_patch16_224", {"patch_size": 2, "embed_dim": 32, "depth": 1, "num_heads": 2},
     (1, 8, 8)),
    ("resnet10t", {"channels": (16, 32, 64, 128), "stem_width": 8}, (3, 16, 16)),
]


@pytest.mark.parametrize("name,kwargs,shape", FAMILIES)
def test_width_multiplier_narrows_the_family(name, kwargs, shape):
    def build(**over):
        return build_model(name, 5, shape[0], shape[1], kwargs={**kwargs, **over})

    model = build()
    full = measure_cost(model, shape)
    same = build(**width_overrides(model, 1.0))
    assert measure_cost(same, shape) == full  # w = 1 is the original model
    half = build(**width_overrides(model, 0.5))
    cost = measure_cost(half, shape)
    assert cost.params < 0.6 * full.params and cost.macs < 0.6 * full.macs
    assert type(half) is type(model)
    assert half(torch.zeros(2, *shape)).shape == (2, 5)


def test_dense_small_in_a_suite_meets_budget_and_trains_all_epochs(tiny_suite, write_suite,
                                                                   tmp_path):
    tiny_suite["models"] = [{"name": "mlp", "kwargs": {"hidden": [48, 48]}}]
    tiny_suite["methods"] = [{"name": "dense-small"}]
    tiny_suite["targets"] = [{"macs": 0.3}]
    tiny_suite["train"].update(epochs=3, lr=1e-2)
    path = write_suite(tiny_suite)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 0
    records = [json.loads(p.read_text()) for p in (results / "cells").glob("*.json")]
    assert len(records) == 1
    for r in records:
        assert r["status"] == "ok", r.get("error")
        m, info = r["metrics"], r["method_info"]
        assert m["budget"]["met"] and m["budget"]["achieved"] > 0.5 * m["budget"]["ratio"]
        assert 0 < info["width_multiplier"] < 1
        hidden = info["width_overrides"]["hidden"]
        assert all(h < 48 for h in hidden)
        assert info["from_scratch_epochs"] == 3  # plus the suite's fine-tuning epochs
        # its ledger: trained from scratch (not the dense baseline's pretrain) + fine-tuned
        ledger = r["ledger"]
        assert [p["phase"] for p in ledger["phases"]] == ["method_train", "finetune"]
        assert ledger["phases"][0]["epochs"] == 3 and ledger["violation"] is None
        assert ledger["total_steps"] == ledger["budget_steps"]
        assert m["top1"] > 0.3  # trained, not a random init (10 classes)


def test_tiny_widths_of_a_tiered_stem_resnet_still_build():
    """timm's tiered stem splits stem_width in quarters: a tiny multiplier must not reach 0."""
    import torch

    from bench.models import build_model
    from methods.dense_small import width_overrides

    kwargs = {"channels": [16, 32, 64, 128], "stem_width": 16}
    model = build_model("resnet10t", 10, 3, 32, kwargs=kwargs, stem="cifar")
    for w in (0.02, 0.1):
        narrow = build_model("resnet10t", 10, 3, 32, kwargs=width_overrides(model, w),
                             stem="cifar")
        assert narrow(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


# -- through bench.compress (the library door) ----------------------------------------

def _synthetic(shape=(3, 32, 32), n=32):
    from bench.data import DataBundle, Split

    g = torch.Generator().manual_seed(0)

    def split(k):
        return Split(torch.randn(k, *shape, generator=g), torch.randint(0, 10, (k,), generator=g))

    return DataBundle("synthetic", split(n), split(n), split(n // 2), 10, shape[0], shape[1],
                      (0.0,) * shape[0], (1.0,) * shape[0])


def _tiny_resnet(**over):
    import timm

    return timm.create_model("resnet10t", num_classes=10,
                             **{"channels": (8, 16, 32, 64), "stem_width": 8, **over})


def test_library_refusals_say_what_to_pass_before_any_work():
    """No builder and no data: one message naming both (builder first). A builder but no
    data: the data refusal, before the width search builds anything."""
    import bench

    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError) as e:
        bench.compress(_tiny_resnet(), "dense-small", macs=0.5, example_input=x)
    msg = str(e.value)
    assert "dense-small" in msg and "build=" in msg and "width_multiplier" in msg
    assert "does not reproduce" in msg  # why no builder was derived from the timm name
    assert msg.index("build=") < msg.index("data=")
    calls = []

    def build(**kw):
        calls.append(kw)
        return _tiny_resnet(**kw)

    with pytest.raises(ValueError, match="needs training data; pass data="):
        bench.compress(_tiny_resnet(), "dense-small", macs=0.5, example_input=x, build=build)
    assert calls == []


def test_library_builder_with_width_multiplier_narrows_any_family():
    """A builder that takes width_multiplier gets w itself: a family dense-small does not
    narrow on its own (an MLP-Mixer) works."""
    from timm.models.mlp_mixer import MlpMixer

    import bench

    def build(width_multiplier):
        return MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=1,
                        embed_dim=max(1, round(32 * width_multiplier)))

    out = bench.compress(build(1.0), "dense-small", macs=0.5,
                         example_input=torch.randn(1, 3, 32, 32), data=_synthetic(),
                         build=build, method_params={"search_steps": 6},
                         train={"batch_size": 32, "augment": False})
    assert 0.25 < out.macs_ratio <= 0.5
    assert 0 < out.info["width_multiplier"] < 1 and "width_overrides" not in out.info
    assert out.info["from_scratch_epochs"] == 1
    assert out.model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_library_derives_a_builder_from_a_timm_name_when_it_reproduces_the_model():
    import timm

    import bench
    from bench.api import timm_builder

    model = timm.create_model("test_vit", num_classes=10, img_size=32)
    build, why = timm_builder(model, (3, 32, 32))
    assert build is not None, why
    assert build(embed_dim=32).embed_dim == 32
    out = bench.compress(model, "dense-small", macs=0.5, example_input=torch.randn(1, 3, 32, 32),
                         data=_synthetic(), method_params={"search_steps": 4},
                         train={"batch_size": 32, "augment": False})
    assert out.macs_ratio <= 0.5 and out.info["width_overrides"]["embed_dim"] < 64
    # built with other arguments than the name's: not trusted
    custom = timm.create_model("test_vit", num_classes=10, img_size=32, depth=1)
    assert timm_builder(custom, (3, 32, 32))[0] is None
