"""The GPU-only paths of ddpm.train as checks: each exits non-zero with a one-line reason if it fails.

CI has no GPU, so these paths are unit-tested on the CPU through their cores (``_match_strides``,
``native_bf16``, the output layer's float32 under autocast); this script runs them where they run for real.

  1. compile + channels_last: 20 steps of a compiled channels-last run against 20 eager contiguous steps
     from the same seed (float32): the same losses to 1e-2 relative. Rounding differences grow through
     Adam's steps (1.2e-3 after 20 steps on a CPU, compile against eager); a wrong layout costs O(1).
  2. resume switching channels_last: 10 steps channels-last, then --resume without it to 20 (on CUDA the
     fused Adam refuses optimizer states whose strides differ from the parameters'): the resumed run's
     losses equal the straight run's to 1e-2 relative (6e-4 on a CPU).
  3. bf16: 20 steps under bf16 autocast against the float32 run: losses within 5% relative; the trained
     network's output under autocast within 2% of float32's (bf16 keeps 8 bits), and in float32.
  4. fused Adam: the run's step-20 checkpoint (on CUDA, a fused Adam's state) continues to step 25 on the
     CPU and on the device: the same losses to 1e-2 relative.

    python benchmarks/gpu_checks.py --device cuda
    python benchmarks/gpu_checks.py --device cpu      # the same checks on the CPU (compile needs a C compiler)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from ddpm.train import TrainConfig, train


def run(base: TrainConfig, folder: Path, **changes):
    return train(replace(base, out_dir=str(folder), **changes), progress=False)


def relative_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def check(name: str, ok: bool, detail: str, results: dict) -> None:
    results[name] = {"ok": ok, "detail": detail}
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", default=None, help="write the results here as JSON")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run with --device cpu for the same checks on the CPU")
    work = Path(tempfile.mkdtemp(prefix="ddpm-gpu-checks-"))
    base = TrainConfig(data="digits", model="tiny", steps=20, batch_size=64, sample_every=0,
                       checkpoint_every=10, seed=1234, warmup=1, device=args.device, bf16=False,
                       compile=False, channels_last=False)
    results: dict = {}
    tick = time.perf_counter()

    eager = run(base, work / "eager")
    fast = run(base, work / "compiled", compile=True, channels_last=True)
    gap = relative_gap(fast.losses, eager.losses)
    check("compile+channels_last", gap < 1e-2 and fast.config.compile and fast.config.channels_last,
          f"max relative loss gap over 20 steps {gap:.2e} (bar 1e-2)", results)

    run(base, work / "switched", steps=10, channels_last=True)
    resumed = run(base, work / "switched", resume=True, channels_last=False)
    gap = relative_gap(resumed.losses, eager.losses[10:])
    check("resume switching channels_last", resumed.step == 20 and gap < 1e-2,
          f"resumed at step 10, reached {resumed.step}; max relative loss gap {gap:.2e} (bar 1e-2)", results)

    low = run(base, work / "bf16", bf16=True)
    loss_gap = relative_gap(low.losses, eager.losses)
    net = eager.model.to(args.device).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 8, 8, generator=gen).to(args.device)
    t = torch.randint(1, 1001, (64,), generator=gen).to(args.device)
    with torch.no_grad():
        full = net(x, t)
        with torch.autocast(net.conv_out.weight.device.type, torch.bfloat16):
            half = net(x, t)
    out_gap = ((half - full).norm() / full.norm()).item()
    check("bf16 autocast", low.config.bf16 and loss_gap < 0.05 and out_gap < 0.02 and half.dtype == torch.float32,
          f"20 bf16 steps: max relative loss gap to float32 {loss_gap:.2%} (bar 5%); the trained network's "
          f"output under autocast: relative error {out_gap:.2%} (bar 2%), dtype {half.dtype}", results)

    shutil.copytree(work / "eager", work / "moved")
    here = run(base, work / "eager", resume=True, steps=25)
    moved = run(base, work / "moved", resume=True, steps=25, device="cpu")
    fused = torch.load(work / "moved" / "checkpoint.pt", map_location="cpu",
                       weights_only=False)["optimizer"]["param_groups"][0].get("fused")
    gap = relative_gap(moved.losses, here.losses)
    check("Adam state moves between devices", moved.step == 25 and gap < 1e-2,
          f"step-20 checkpoint of {args.device} continued to 25 on the cpu and on {args.device}: max "
          f"relative loss gap {gap:.2e} (bar 1e-2); saved optimizer fused={fused}", results)

    print(f"all checks in {time.perf_counter() - tick:.0f} s on {args.device}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
