"""The tiny U-Net's training step in bf16 autocast on this CPU, with attention in float32 (what
``ddpm.UNet`` does on a CPU) against torch's fused bf16 kernel (what it did before), in the same run.

    python benchmarks/attention_bf16.py            # the run of RESULTS.md (one torch thread, about a minute)
    python benchmarks/attention_bf16.py --quick    # a smoke test

A training step here is the forward and backward pass of ``UNet.preset("tiny")`` (the digits network,
attention at 4x4 = 16 positions) on a batch of 128, under bf16 autocast as ``ddpm.train`` runs it where the
CPU computes bf16 natively; a sampling step is one no-grad forward pass of 256. The two attention paths
alternate in rounds so that a change of load falls on both; one JSON line per run is appended to
``attention_bf16.jsonl`` with the machine, torch's version and the load average.
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
import torch.nn.functional as F

import ddpm
from ddpm import unet
from sampling_bf16 import cpu_info


def fused_bf16_forward(self, x):
    """``Attention.forward`` as it was: the fused kernel in whatever dtype autocast gives it."""
    B, C, H, W = x.shape
    qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).contiguous()
    q, k, v = qkv.reshape(B, 1, H * W, 3, C).unbind(3)
    h = F.scaled_dot_product_attention(q, k, v)
    return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


def seconds_per_call(fn, calls: int) -> float:
    tick = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - tick) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few calls of each, to test the script")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started, load_before, tick = datetime.datetime.now().isoformat(timespec="seconds"), os.getloadavg(), time.perf_counter()
    torch.manual_seed(0)
    net = ddpm.UNet.preset("tiny", in_channels=1, image_size=8)
    x, t = torch.randn(128, 1, 8, 8), torch.randint(1, 1001, (128,))
    x_big, t_big = torch.randn(256, 1, 8, 8), torch.randint(1, 1001, (256,))

    def train_step():
        net.train()
        with torch.autocast("cpu", torch.bfloat16):
            loss = net(x, t).float().pow(2).mean()
        loss.backward()

    def sample_step():
        net.eval()
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            net(x_big, t_big)

    ours = unet.Attention.forward
    paths = {"float32 attention": ours, "fused bf16 attention": fused_bf16_forward}
    calls, rounds = (2, 1) if args.quick else (20, 5)
    timings = {w: {p: [] for p in paths} for w in ("train_step", "sample_step")}
    try:
        for _ in range(rounds):
            for name, forward in paths.items():
                unet.Attention.forward = forward
                for workload, fn in (("train_step", train_step), ("sample_step", sample_step)):
                    fn()   # warm-up
                    timings[workload][name].append(seconds_per_call(fn, calls))
    finally:
        unet.Attention.forward = ours
    results = {}
    for workload, per_path in timings.items():
        median = {p: statistics.median(v) for p, v in per_path.items()}
        results[workload] = {"seconds": per_path, "median_seconds": median,
                             "speedup": median["fused bf16 attention"] / median["float32 attention"]}
        print(f"{workload}: float32 attention {1e3 * median['float32 attention']:.1f} ms, fused bf16 "
              f"{1e3 * median['fused bf16 attention']:.1f} ms, speed-up {results[workload]['speedup']:.2f}x")
    entry = {"started": started, "seconds": time.perf_counter() - tick, "quick": args.quick,
             "calls_per_round": calls, "rounds": rounds, **cpu_info(), "torch": torch.__version__,
             "python": platform.python_version(), "load_average_before": load_before,
             "load_average_after": os.getloadavg(), "results": results}
    print(f"{entry['cpu']} ({', '.join(entry['bf16_flags']) or 'no bf16 flags'}), {entry['seconds']:.0f} s; "
          f"load average {load_before[0]:.2f} -> {entry['load_average_after'][0]:.2f}")
    if not args.quick:
        with open(Path(__file__).with_name("attention_bf16.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")


if __name__ == "__main__":
    main()
