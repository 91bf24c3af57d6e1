"""How many steps the quick suite's micro ViT (and maestro's full-rank model) needs on digits.

Trains the model under a few training settings and prints one JSON line per
run: test top-1, optimizer steps, training wall seconds and process CPU
seconds. Run with OMP_NUM_THREADS=1; compare CPU seconds between variants
(relative figures): wall times depend on the machine's load.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quick_convergence.py \
        --variant epochs=24,batch_size=32 --variant epochs=12,warmup_epochs=1
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.data import load_dataset
from bench.measure import measure_cost
from bench.method import MethodContext
from bench.models import build_model
from bench.train import evaluate, train

VIT = {"patch_size": 2, "embed_dim": 64, "depth": 2, "num_heads": 2}
BASE = {"epochs": 12, "batch_size": 64, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 5e-4,
        "augment": False}


def parse(text: str) -> tuple[dict, dict]:
    """'epochs=24,batch_size=32,m.global_pool=avg' -> (train overrides, model kwargs)."""
    train_kw, model_kw = {}, {}
    for part in filter(None, text.split(",")):
        key, value = part.split("=")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        if key.startswith("m."):
            model_kw[key[2:]] = value
        else:
            train_kw[key] = value
    return train_kw, model_kw


def run(variant: str, method: str, seed: int, data) -> dict:
    train_kw, model_kw = parse(variant)
    torch.manual_seed(seed)
    model = build_model("vit_tiny_patch16_224", data.num_classes, data.in_chans, data.img_size,
                        kwargs={**VIT, **model_kw})
    m = ctx = None
    if method == "maestro":
        from methods.maestro import Maestro

        m = Maestro({"rank_step": 0.25})
        ctx = MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=seed,
                            calibration_batches=lambda: iter(()), val_batches=lambda: iter(()),
                            measure=lambda mod: measure_cost(mod, data.input_shape),
                            input_shape=data.input_shape)
        model = m.prepare(model, ctx)
    cpu0 = time.process_time()
    stats = train(model, data, seed=seed, method=m, ctx=ctx, **{**BASE, **train_kw})
    cpu_s = time.process_time() - cpu0
    if method == "maestro":
        for layer in model.modules():
            if hasattr(layer, "od_rank"):
                layer.od_rank = None
    top1 = evaluate(model, data)["top1"]
    return {"variant": variant or "base", "method": method, "seed": seed, "top1": round(top1, 4),
            "steps": stats.steps, "train_s": round(stats.seconds, 1),
            "cpu_s": round(cpu_s, 1),
            "final_loss": round(stats.history[-1]["loss"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", default=[],
                    help="comma-separated key=value training overrides; m.KEY for model kwargs")
    ap.add_argument("--method", choices=["dense", "maestro"], default="dense")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("digits")
    for variant in args.variant or [""]:
        for seed in args.seeds:
            print(json.dumps(run(variant, args.method, seed, data)), flush=True)


if __name__ == "__main__":
    main()
