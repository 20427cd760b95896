"""The digits recipe search: which settings give the best samples for a fixed CPU budget.

    python benchmarks/digits_recipe.py                     # the search of DIGITS_RECIPE.md
    python benchmarks/digits_recipe.py --budget 5 --samples 32 --only base   # a smoke test

Every trial trains ``ddpm.train`` on the digits for ``--budget`` seconds of one torch thread (the book
executes each chapter on one thread): short calibration runs measure the seconds per step of that
setting (a 50-step run less a 10-step one, after a first run that pays the process's one-time costs), and
the trial then trains as many steps as fit. Its EMA weights draw ``--samples`` digits with Algorithm 2
(1000 steps), scored against the 359 held-out digits with

- the Fréchet distance in the features of chapter 7's digits classifier (lower is better), next to the
  same distance from as many *training* digits (the floor real data reaches at this size);
- the classifier's mean confidence (mean of the largest softmax probability) and the class balance as an
  effective number of classes, exp(entropy of the predicted-class histogram): 10 when balanced.

Trials run ``--jobs`` at a time, each in its own process on one thread. Each trial's results are appended
as one JSON line to ``digits_recipe.jsonl`` next to this file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

# name: TrainConfig overrides of the package's digits defaults (batch 128, warm-up 200, the tiny preset's
# dropout 0.1; steps are set by the budget); "width" overrides the tiny preset's ch (a network TrainConfig
# cannot name: it is passed to train() as model=)
TRIALS = {
    "base": {"lr": 2e-4},             # the digits defaults before this search (lr 2e-4, batch 128)
    "fp32": {"lr": 2e-4, "bf16": False},
    "lr 5e-4": {"lr": 5e-4},
    "lr 1e-3": {"lr": 1e-3},
    "batch 64": {"batch_size": 64, "lr": 2e-4},
    "batch 64, lr 5e-4": {"batch_size": 64, "lr": 5e-4},
    "batch 64, lr 1e-3": {"batch_size": 64, "lr": 1e-3},
    "batch 256, lr 5e-4": {"batch_size": 256, "lr": 5e-4},
    "batch 32, lr 2e-4": {"batch_size": 32, "lr": 2e-4},
    "lr 5e-4, fp32": {"lr": 5e-4, "bf16": False},
    "lr 5e-4, no dropout": {"lr": 5e-4, "dropout": 0.0},
    "lr 5e-4, warm-up 50": {"lr": 5e-4, "warmup": 50},
    "lr 5e-4, width 16": {"lr": 5e-4, "width": 16},
    "lr 5e-4, width 64": {"lr": 5e-4, "width": 64},
}
CALIBRATION_STEPS = (10, 50)


def trial(name: str, overrides: dict, budget: float, samples: int, seed: int) -> dict:
    import torch

    import ddpm
    from ddpm.classifier import confidence_and_classes, digits_frechet_distance, train_digits_classifier
    from ddpm.config import resolve
    from ddpm.train import TrainConfig, train

    torch.set_num_threads(1)
    overrides = dict(overrides)
    width = overrides.pop("width", None)
    with tempfile.TemporaryDirectory() as work:
        config = TrainConfig(data="digits", seed=seed, sample_every=0, **overrides)
        full = resolve(config, (1, 8, 8), torch.device("cpu"))

        def network():
            torch.manual_seed(seed)
            extra = {} if full.dropout is None else {"dropout": full.dropout}
            return ddpm.UNet.preset("tiny", ch=width, **extra) if width else None

        seconds = []
        # a first run pays the process's one-time costs; then the difference of two runs gives the
        # seconds per step without the set-up
        for steps in (CALIBRATION_STEPS[0], *CALIBRATION_STEPS):
            tick = time.perf_counter()
            calibration = {"steps": steps, "warmup": 1, "out_dir": f"{work}/c{len(seconds)}"}
            train(TrainConfig(**{**asdict(config), **calibration}), model=network(), progress=False)
            seconds.append(time.perf_counter() - tick)
        per_step = (seconds[2] - seconds[1]) / (CALIBRATION_STEPS[1] - CALIBRATION_STEPS[0])
        steps = max(1, int(budget / per_step))
        config = TrainConfig(**{**asdict(config), "steps": steps, "checkpoint_every": steps,
                                "out_dir": f"{work}/run"})
        tick = time.perf_counter()
        result = train(config, model=network(), progress=False)
        train_s = time.perf_counter() - tick
    net = result.ema.eval()
    s = ddpm.NoiseSchedule.linear(result.config.T, result.config.beta_1, result.config.beta_T)
    tick = time.perf_counter()
    x = ddpm.sample(s, net, (samples, 1, 8, 8), generator=torch.Generator().manual_seed(seed + 1))
    sample_s = time.perf_counter() - tick

    classifier = train_digits_classifier(seed=0)
    test = ddpm.digits("test")
    train_digits = ddpm.digits("train")
    g = torch.Generator().manual_seed(seed + 2)
    reference = test[torch.randperm(len(test), generator=g)[:samples]]
    floor = [digits_frechet_distance(train_digits[torch.randperm(len(train_digits), generator=g)[:samples]],
                                     reference, classifier) for _ in range(5)]
    confidence, classes = confidence_and_classes(classifier, x)
    return {"trial": name, "overrides": {**overrides, **({"width": width} if width else {})}, "seed": seed,
            "budget_s": budget, "steps": steps, "batch_size": result.config.batch_size, "lr": result.config.lr,
            "bf16": result.config.bf16, "params": sum(p.numel() for p in net.parameters()),
            "train_s": round(train_s, 1), "img_per_s": round(steps * result.config.batch_size / train_s, 1),
            "sample_s": round(sample_s, 1), "samples": samples,
            "frechet": round(digits_frechet_distance(x, reference, classifier), 2),
            "frechet_train_vs_test": round(sum(floor) / len(floor), 2),
            "confidence": round(confidence, 4), "effective_classes": round(classes, 3),
            "last_losses": round(sum(result.losses[-50:]) / len(result.losses[-50:]), 4)}


def _run(args):
    name, overrides, budget, samples, seed = args
    os.environ["OMP_NUM_THREADS"] = "1"
    return trial(name, overrides, budget, samples, seed)


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=180.0, help="training seconds per trial, one thread")
    p.add_argument("--samples", type=int, default=359, help="digits drawn per trial (359: the test set)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--only", nargs="+", choices=sorted(TRIALS), help="run only these trials")
    p.add_argument("--jobs", type=int, default=2, help="trials at a time, one thread each")
    p.add_argument("--jsonl", type=Path, default=Path(__file__).with_name("digits_recipe.jsonl"))
    args = p.parse_args()
    import torch

    names = args.only or list(TRIALS)
    work = [(n, TRIALS[n], args.budget, args.samples, seed) for seed in args.seeds for n in names]
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": _cpu_name(),
            "torch": torch.__version__, "jobs": args.jobs,
            "cpu_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()),
            "cpu_amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())}
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for row in pool.imap_unordered(_run, work):
            row = {**row, **meta}
            print(json.dumps(row), flush=True)
            with args.jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
