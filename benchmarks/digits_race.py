"""Digits in N minutes: sample quality per CPU-minute, ddpm against diffusers trained for the same time.

    python benchmarks/digits_race.py --threads 1     # the race of RESULTS.md
    python benchmarks/digits_race.py --quick                        # a smoke test of every code path

Ours runs as a user runs it: ``ddpm.train.train`` with the digits defaults (``python -m ddpm train --data
digits``); its training time is the budget. The peer is the way diffusers' users train:
``UNet2DModel`` + ``DDPMScheduler`` (linear β from 1e-4 to 0.02, T = 1000, as the paper), Adam at lr 2e-4,
batch 128, ε-MSE, trained for the same wall-clock budget in the same process, then sampled with the
scheduler's own 1000-step loop. Each model then draws ``--samples`` digits (timed), and both sets are
scored with the Fréchet distance of chapter 8 (the features of ddpm's own digits classifier) against as
many held-out real digits; two disjoint halves of the real digits give the real-vs-real floor.
Results are printed and appended to ``digits_race.json`` next to this file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import ddpm
from ddpm.classifier import digits_frechet_distance, train_digits_classifier
from ddpm.train import TrainConfig, train


def ours(samples: int, seed: int, work: Path, steps: int | None) -> dict:
    """Train with the digits defaults (or ``steps``), then draw ``samples`` digits with Algorithm 2."""
    config = TrainConfig(data="digits", out_dir=str(work / "ours"), seed=seed, sample_every=0)
    tick = time.perf_counter()
    result = train(replace(config, steps=steps) if steps else config, progress=False)
    trained = time.perf_counter() - tick
    s = ddpm.NoiseSchedule.linear(result.config.T, result.config.beta_1, result.config.beta_T)
    result.ema.eval()
    tick = time.perf_counter()
    x = ddpm.sample(s, result.ema, (samples, 1, 8, 8), generator=torch.Generator().manual_seed(seed + 1))
    return {"steps": result.config.steps, "batch": result.config.batch_size, "train_s": trained,
            "sample_s": time.perf_counter() - tick, "params": sum(p.numel() for p in result.ema.parameters()),
            "images": x, "recipe": {k: getattr(result.config, k) for k in ("model", "lr", "warmup", "bf16")}}


def diffusers_run(budget: float, samples: int, seed: int, steps: int | None) -> dict:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    net = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=2,
                      block_out_channels=(64, 128), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                      up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                              beta_schedule="linear", variance_type="fixed_large", clip_sample=True)
    data = ddpm.digits("train")
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    g = torch.Generator().manual_seed(seed)
    done, tick = 0, time.perf_counter()
    while (time.perf_counter() - tick < budget) if steps is None else done < steps:
        x0 = data[torch.randint(0, len(data), (128,), generator=g)]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (128,), generator=g)
        loss = torch.nn.functional.mse_loss(net(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += 1
    trained = time.perf_counter() - tick
    net.eval()
    scheduler.set_timesteps(1000)
    tick = time.perf_counter()
    x = torch.randn((samples, 1, 8, 8), generator=g)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t).sample, t, x, generator=g).prev_sample
    return {"steps": done, "batch": 128, "train_s": trained, "sample_s": time.perf_counter() - tick,
            "params": sum(p.numel() for p in net.parameters()), "images": x.clamp(-1, 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=256, help="digits drawn from each model")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: 20 steps each, 16 samples")
    p.add_argument("--json", type=Path, default=Path(__file__).with_name("digits_race.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, samples = (20, 16) if args.quick else (None, args.samples)
    classifier = train_digits_classifier(seed=args.seed)
    real = ddpm.digits("test")
    real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(args.seed))]
    reference, other = real[:samples], real[samples:2 * samples]
    with tempfile.TemporaryDirectory() as work:
        runs = {"ddpm": ours(samples, args.seed, Path(work), steps)}
        runs["diffusers"] = diffusers_run(runs["ddpm"]["train_s"], samples, args.seed, steps)
    result = {"when": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "load_average": os.getloadavg(), "quick": args.quick,
              "real_vs_real": digits_frechet_distance(other, reference, classifier)}
    for name, run in runs.items():
        images = run.pop("images")
        run["frechet"] = digits_frechet_distance(images, reference, classifier)
        run["img_per_s"] = run["steps"] * run["batch"] / run["train_s"]
        result[name] = run
        print(f"{name:10s} {run['params']:>9,d} params  {run['steps']:>6d} steps in {run['train_s']:6.1f} s "
              f"({run['img_per_s']:6.0f} img/s)  sampling {run['sample_s']:6.1f} s  Fréchet {run['frechet']:7.2f}")
    print(f"real vs real (two halves of the held-out digits, {samples} each): Fréchet {result['real_vs_real']:.2f}")
    history = json.loads(args.json.read_text()) if args.json.exists() else []
    args.json.write_text(json.dumps(history + [result], indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
