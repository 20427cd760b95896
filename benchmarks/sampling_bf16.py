"""Sampling in float32 against bf16 (``ddpm.sample(..., bf16=True)``) on this CPU, in the same run.

    python benchmarks/sampling_bf16.py              # the run of RESULTS.md (one torch thread, about a minute)
    python benchmarks/sampling_bf16.py --quick      # a smoke test of every code path

Two workloads, each timed over a fixed number of Algorithm 2 steps (``sample`` from x_t at t = steps, so
exactly that many network calls), float32 and bf16 alternating in rounds so that a change of load on the
machine falls on both:

- digits: 256 samples of 1x8x8 from ``UNet.preset("tiny")``; the per-step time and the projected time of
  the full 1000-step chain;
- cifar10: a batch of 8 samples of 3x32x32 from ``UNet.preset("cifar10")`` (35.7M parameters).

The weights are random (the output layer made non-zero): the time per step does not depend on them. The
machine (CPU model, its bf16 flags in /proc/cpuinfo), torch's version and the load average are recorded with
the numbers, one JSON line per run appended to ``sampling_bf16.jsonl`` next to this file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import ddpm
from ddpm.config import native_bf16

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def cpu_info() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"cpu": model, "bf16_flags": [f for f in BF16_FLAGS if f in flags], "cores": os.cpu_count(),
            "native_bf16": native_bf16(torch.device("cpu"))}


def network(preset: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    net = ddpm.UNet.preset(preset, **overrides).eval()
    with torch.no_grad():  # the output layer starts at zero (as in the original): give it weights
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return net


def time_steps(s, net, x_T: torch.Tensor, steps: int, bf16: bool) -> tuple[float, torch.Tensor]:
    """Seconds per step of ``steps`` steps of Algorithm 2 from x_(steps) = x_T, and the sample."""
    tick = time.perf_counter()
    x = ddpm.sample(s, net, None, x_T=x_T, start_t=steps, generator=torch.Generator().manual_seed(1), bf16=bf16)
    return (time.perf_counter() - tick) / steps, x


def workload(name: str, net, shape, steps: int, rounds: int, warmup: int) -> dict:
    """Alternating float32 and bf16 rounds of ``steps`` steps each, after ``warmup`` steps of each."""
    s = ddpm.NoiseSchedule.linear(T=1000)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    for bf16 in (False, True):
        time_steps(s, net, x_T, warmup, bf16)
    per_step = {"float32": [], "bf16": []}
    samples = {}
    for _ in range(rounds):
        for bf16, key in ((False, "float32"), (True, "bf16")):
            seconds, samples[key] = time_steps(s, net, x_T, steps, bf16)
            per_step[key].append(seconds)
    median = {k: statistics.median(v) for k, v in per_step.items()}
    row = {"workload": name, "shape": list(shape), "steps_per_round": steps, "rounds": rounds,
           "parameters": sum(p.numel() for p in net.parameters()),
           "seconds_per_step": per_step, "median_seconds_per_step": median,
           "projected_1000_steps_s": {k: 1000 * v for k, v in median.items()},
           "speedup_bf16": median["float32"] / median["bf16"],
           "per_round_speedups": [a / b for a, b in zip(per_step["float32"], per_step["bf16"])],
           "max_abs_sample_difference": (samples["bf16"] - samples["float32"]).abs().max().item()}
    print(f"{name}: {shape}, {steps} steps x {rounds} rounds: float32 {1e3 * median['float32']:.1f} ms/step, "
          f"bf16 {1e3 * median['bf16']:.1f} ms/step, speed-up {row['speedup_bf16']:.2f}x "
          f"(per round {', '.join(f'{r:.2f}' for r in row['per_round_speedups'])}); 1000 steps: "
          f"{row['projected_1000_steps_s']['float32']:.0f} s against {row['projected_1000_steps_s']['bf16']:.0f} s",
          flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    parser.add_argument("--quick", action="store_true", help="a few steps of each, to test the script")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    load_before = os.getloadavg()
    tick = time.perf_counter()
    digits_steps, cifar_steps, rounds = (2, 1, 1) if args.quick else (25, 3, 4)
    rows = [workload("digits", network("tiny", in_channels=1, image_size=8), (256, 1, 8, 8), digits_steps, rounds,
                     warmup=2),
            workload("cifar10", network("cifar10"), (8, 3, 32, 32), cifar_steps, rounds, warmup=1)]
    entry = {"started": started, "seconds": time.perf_counter() - tick, "threads": args.threads,
             "quick": args.quick, **cpu_info(), "torch": torch.__version__, "python": platform.python_version(),
             "load_average_before": load_before, "load_average_after": os.getloadavg(), "results": rows}
    print(f"{entry['cpu']} ({', '.join(entry['bf16_flags']) or 'no bf16 flags'}), torch {entry['torch']}, "
          f"{args.threads} thread(s), {entry['seconds']:.0f} s; load average {load_before[0]:.2f} -> "
          f"{entry['load_average_after'][0]:.2f}")
    if not args.quick:
        with open(Path(__file__).with_name("sampling_bf16.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")


if __name__ == "__main__":
    main()
