"""Speed and memory of ddpm.UNet against diffusers' UNet2DModel and denoising-diffusion-pytorch's Unet.

    python benchmarks/bench.py --device cpu     # float32, eager; under 10 minutes on 2 quiet cores
    python benchmarks/bench.py --device cuda    # bf16 autocast for all; ours also torch.compile + channels_last
    python benchmarks/bench.py --quick          # a smoke test of every code path (small sizes, 2 rounds)

Everything runs in one process, with one configuration and one batch, in alternating rounds (A B C A B C …)
so that a drift of the machine hits every contender alike; each ratio (ours / peer, per round) is reported
as min / median / max over the rounds. Training: one step is forward + L_simple (Eq. 14) + backward + Adam,
with the same loss, optimizer and data for every network. Sampling: Algorithm 2 with ``ddpm.sample``
against diffusers' ``DDPMScheduler`` loop driving the same network (this isolates the sampler), and
against that loop driving its own UNet2DModel. Peak memory is measured in a fresh process per contender.
Results are printed and appended to a JSON file (a list of runs). Time it on a quiet machine: the load
average is recorded at the start and the end, and a warning is printed when it exceeds the cores (with
other jobs running, ``--threads 1`` keeps CPU timings far steadier than two contended threads).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import ddpm
from ddpm import UNet
from ddpm.config import native_bf16

# name -> (UNet preset, overrides): the paper's CIFAR-10 network, and the "tiny" preset at 32x32 RGB.
SIZES = {"cifar10": ("cifar10", {}), "celeba64": ("celeba64", {}),
         "small": ("tiny", dict(in_channels=3, image_size=32))}
DEFAULT_SIZES = {"cpu": "cifar10,small", "cuda": "cifar10,celeba64,small"}
# (device, size) -> training batch and timed steps per round.
TRAIN = {("cpu", "cifar10"): (8, 1), ("cpu", "small"): (32, 4), ("cuda", "cifar10"): (128, 20),
         ("cuda", "small"): (128, 20),
         ("cpu", "celeba64"): (2, 1), ("cuda", "celeba64"): (64, 20)}
# device -> sampling network size, batch and number of steps (on a CPU a shorter chain: time per step is what counts).
SAMPLE = {"cpu": ("small", 4, 100), "cuda": ("cifar10", 128, 1000)}
PEERS = ("diffusers", "dd-pytorch")
START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.0f} s] {message}", file=sys.stderr, flush=True)


@dataclass
class Contender:
    name: str
    model: nn.Module
    fn: object        # eps_model(x_t, t) as timed: compiled for ours where asked
    eager_fn: object  # the same without torch.compile (FLOP counting)
    opt: torch.optim.Optimizer
    amp: bool
    channels_last: bool


def policy(args, dev) -> dict:
    """How each library's users run it: on a GPU bf16 autocast for all, and ours with torch.compile and
    channels_last (the defaults of ddpm.train); on a CPU the peers in float32 and eager, and ours as
    ddpm.train runs it: bf16 autocast where the CPU computes bf16 natively ("amp_ours"). --amp on/off sets
    every network alike (the like-for-like comparison); --compile/--channels-last apply to ours."""
    auto = dev.type == "cuda"
    pol = {k: auto if getattr(args, k) == "auto" else getattr(args, k) == "on"
           for k in ("amp", "compile", "channels_last")}
    pol["amp_ours"] = native_bf16(dev) if args.amp == "auto" else pol["amp"]
    return pol


def diffusers_unet(c: dict) -> nn.Module:
    """UNet2DModel with ours' configuration: single-head attention at the same resolutions, sin-then-cos
    embedding with ω_i = 10000^(-i/(d/2-1)) (freq_shift=1), GroupNorm eps 1e-6, symmetric downsampling pad."""
    from diffusers import UNet2DModel
    res = [c["image_size"] // 2**i for i in range(len(c["ch_mult"]))]
    attn = [r in c["attn_resolutions"] for r in res]
    return UNet2DModel(
        sample_size=c["image_size"], in_channels=c["in_channels"], out_channels=c["in_channels"],
        block_out_channels=tuple(c["ch"] * m for m in c["ch_mult"]), layers_per_block=c["num_res_blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=None, norm_num_groups=c["num_groups"], norm_eps=1e-6, dropout=c["dropout"],
        flip_sin_to_cos=False, freq_shift=1, downsample_padding=1)


def dd_pytorch_unet(c: dict) -> nn.Module:
    """denoising-diffusion-pytorch's Unet at its closest setting (dim=ch, dim_mults=ch_mult). Its architecture
    differs: a 7x7 input conv, RMSNorm instead of GroupNorm, scale-and-shift time conditioning, two ResBlocks
    per level on both paths, 4-head linear attention at every level but the lowest and full attention there."""
    from denoising_diffusion_pytorch import Unet
    return Unet(dim=c["ch"], dim_mults=c["ch_mult"], channels=c["in_channels"], dropout=c["dropout"])


def build(size: str, dev, pol: dict, only: str | None = None) -> list[Contender]:
    """The contenders for one size, each with its own Adam (lr 2e-4; fused on CUDA), seeded alike."""
    preset, overrides = SIZES[size]
    names = ["ours", "ours (eager)", *PEERS] if pol["compile"] else ["ours", *PEERS]
    out = []
    for name in names if only is None else [only]:
        torch.manual_seed(0)
        ours = UNet.preset(preset, **overrides)
        mine = name.startswith("ours")
        model = ours if mine else (diffusers_unet if name == "diffusers" else dd_pytorch_unet)(ours.config)
        cl = mine and pol["channels_last"]
        model = model.to(dev, memory_format=torch.channels_last if cl else torch.contiguous_format).train()
        if name == "diffusers":
            eager = lambda x, t, m=model: m(x, t, return_dict=False)[0]  # noqa: E731 (what .sample returns)
        else:
            eager = model
        fn = torch.compile(model) if name == "ours" and pol["compile"] else eager
        opt = torch.optim.Adam(model.parameters(), lr=2e-4, fused=dev.type == "cuda" or None)
        out.append(Contender(name, model, fn, eager, opt, pol["amp_ours"] if mine else pol["amp"], cl))
    return out


def batch(size: str, n: int, dev, seed: int = 0):
    """One fixed training batch (x_0 uniform in [-1, 1], t, ε), the same for every contender."""
    c = UNet.PRESETS[SIZES[size][0]] | SIZES[size][1]
    g = torch.Generator().manual_seed(seed)
    shape = (n, c["in_channels"], c["image_size"], c["image_size"])
    x0 = torch.rand(shape, generator=g) * 2 - 1
    return x0.to(dev), torch.randint(1, 1001, (n,), generator=g).to(dev), torch.randn(shape, generator=g).to(dev)


def train_step(c: Contender, s, x0, t, noise) -> None:
    if c.channels_last:
        x0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise))
    with torch.autocast(x0.device.type, torch.bfloat16, enabled=c.amp):
        loss = ddpm.l_simple(s, c.fn, x0, t, noise)
    loss.backward()
    c.opt.step()
    c.opt.zero_grad(set_to_none=True)


def sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def flops_per_image(c: Contender, s, x0, t, noise) -> float:
    """FLOPs of one forward + backward for one image (torch's FlopCounterMode: convolutions and matmuls).
    Attention is forced onto the math backend so that every SDPA kernel is counted alike."""
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        ddpm.l_simple(s, c.eager_fn, x0[:1], t[:1], noise[:1]).backward()
    c.opt.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _proc_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def _peak_memory_child(size: str, name: str, device: str, pol: dict, n: int, threads: int) -> dict:
    """In a fresh process: build one contender, run three training steps, return its peak memory in bytes.
    CUDA: torch.cuda.max_memory_allocated (weights, Adam state, gradients, activations; not the allocator's
    cache or the CUDA context). CPU: growth of the resident set's high-water mark (VmHWM, reset through
    /proc/self/clear_refs after the imports): the same, plus what oneDNN and the allocator keep."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = 0 if dev.type == "cuda" else _proc_kib("VmRSS")
    (c,) = build(size, dev, pol, only=name)
    s, data = ddpm.NoiseSchedule.linear(1000).to(dev), batch(size, n, dev)
    for _ in range(3):
        train_step(c, s, *data)
    sync(dev)
    if dev.type == "cuda":
        return {"bytes": torch.cuda.max_memory_allocated(dev), "what": "torch.cuda.max_memory_allocated"}
    return {"bytes": (_proc_kib("VmHWM") - base) * 1024, "what": "VmHWM growth (fresh process)"}


def peak_memory(size, name, dev, pol, n) -> dict:
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_peak_memory_child, size, name, str(dev), pol, n, torch.get_num_threads()).result()


def spread(values) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "rounds": list(values)}


def bench_training(size: str, args, dev, pol: dict) -> dict:
    n, steps = TRAIN[(dev.type, size)]
    n, steps = (args.batch or n, args.steps or steps) if not args.quick else (2, 1)
    contenders, s, data = build(size, dev, pol), ddpm.NoiseSchedule.linear(1000).to(dev), batch(size, n, dev)
    log(f"training {size}: batch {n}, {steps} step(s) per round, {args.repeats} rounds of {[c.name for c in contenders]}")
    flops = {c.name: flops_per_image(c, s, *data) for c in contenders}
    for c in contenders:  # warm-up: compilation, allocator, oneDNN primitive caches
        for _ in range(args.warmup):
            train_step(c, s, *data)
    rates = {c.name: [] for c in contenders}
    for _ in range(args.repeats):
        for c in contenders:
            sync(dev)
            tick = time.perf_counter()
            for _ in range(steps):
                train_step(c, s, *data)
            sync(dev)
            rates[c.name].append(n * steps / (time.perf_counter() - tick))
    out = {"batch": n, "steps_per_round": steps, "contenders": {}, "ratios": {}}
    for c in contenders:
        entry = {"params": sum(p.numel() for p in c.model.parameters()), "img_per_s": spread(rates[c.name]),
                 "gflop_per_img": flops[c.name] / 1e9,
                 "tflop_per_s": spread([r * flops[c.name] / 1e12 for r in rates[c.name]])}
        if dev.type == "cuda":
            entry["mfu"] = spread([r * flops[c.name] / (args.peak_tflops * 1e12) for r in rates[c.name]])
        out["contenders"][c.name] = entry
    for mine in (c.name for c in contenders if c.name.startswith("ours")):
        for peer in PEERS:
            out["ratios"][f"{mine} / {peer}"] = spread([a / b for a, b in zip(rates[mine], rates[peer])])
    del contenders
    if not args.no_memory:
        for name in out["contenders"]:
            log(f"peak memory of {name} ({size}) in a fresh process")
            out["contenders"][name]["peak_memory"] = peak_memory(size, name, dev, pol, n)
    return out


def diffusers_loop(T: int, fn, shape, dev, amp: bool, seed: int):
    """How diffusers' users sample: set_timesteps(T), then model output and scheduler.step at each t."""
    from diffusers import DDPMScheduler
    scheduler = DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                              variance_type="fixed_large", clip_sample=True)
    scheduler.set_timesteps(T)
    g = torch.Generator(dev).manual_seed(seed)
    x = torch.randn(shape, generator=g, device=dev)
    with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16, enabled=amp):
        for t in scheduler.timesteps:
            x = scheduler.step(fn(x, t), t, x, generator=g).prev_sample
    return x


def ours_loop(T: int, fn, shape, dev, amp: bool, seed: int):
    s = ddpm.NoiseSchedule.linear(T).to(dev)  # on the data's device, as ddpm.train keeps it
    g = torch.Generator(dev).manual_seed(seed)
    with torch.autocast(dev.type, torch.bfloat16, enabled=amp):
        return ddpm.sample(s, fn, shape, generator=g, device=dev)


def bench_sampling(args, dev, pol: dict) -> dict:
    size, n, T = SAMPLE[dev.type]
    size, n, T = args.sample_size or size, args.sample_batch or n, args.sample_steps or T
    if args.quick:
        n, T = 2, 5
    ours, peer = (build(size, dev, pol, only=name)[0] for name in ("ours", "diffusers"))
    ours.model.eval()
    peer.model.eval()
    c = ours.model.config
    shape = (n, c["in_channels"], c["image_size"], c["image_size"])
    # diffusers counts t from 0, the paper (and ddpm) from 1: the same network sees t + 1.
    same_net = lambda x, t: ours.fn(x, (t + 1).expand(x.shape[0]).to(dev))  # noqa: E731
    runs = {"ddpm.sample (ours net)": lambda: ours_loop(T, ours.fn, shape, dev, pol["amp"], args.seed),
            "diffusers loop (ours net)": lambda: diffusers_loop(T, same_net, shape, dev, pol["amp"], args.seed),
            "diffusers loop (UNet2DModel)": lambda: diffusers_loop(T, peer.fn, shape, dev, pol["amp"], args.seed)}
    log(f"sampling with the {size} network: batch {n}, {T} steps, {args.repeats} rounds of {list(runs)}")
    first = {name: run() for name, run in runs.items()}  # warm-up (and compilation for eval mode)
    # Same noise, same network: in float32 the two samplers agree up to the rounding of their schedules
    # (under autocast diffusers draws its noise in the network's bf16, so the chains differ).
    agree = None if pol["amp"] else (first["ddpm.sample (ours net)"] - first["diffusers loop (ours net)"]).abs().max().item()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            sync(dev)
            tick = time.perf_counter()
            run()
            sync(dev)
            times[name].append(time.perf_counter() - tick)
    names = list(runs)
    return {"network": size, "batch": n, "steps": T, "max_abs_diff_same_net": agree,
            "ms_per_step": {k: spread([1e3 * v / T for v in times[k]]) for k in names},
            "img_per_s_1000_steps": {k: spread([n * T / (1000 * v) for v in times[k]]) for k in names},
            "ratios": {f"{names[0]} / {other}": spread([b / a for a, b in zip(times[names[0]], times[other])])
                       for other in names[1:]}}


def environment(dev) -> dict:
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    flags = re.search(r"flags\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    env = {"cpu": cpu.group(1) if cpu else platform.processor(), "cores": os.cpu_count(),
           "bf16_flags": sorted(f for f in (flags.group(1).split() if flags else [])
                                if f in ("avx512_bf16", "amx_bf16", "amx_tile")),
           "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
           "versions": {"python": platform.python_version(), "torch": torch.__version__,
                        "diffusers": version("diffusers"), "denoising-diffusion-pytorch": version("denoising-diffusion-pytorch"),
                        "ddpm": ddpm.__version__}}
    if dev.type == "cuda":
        env["gpu"], env["cuda"] = torch.cuda.get_device_name(dev), torch.version.cuda
    return env


def fmt(d: dict, scale: float = 1.0, digits: int = 2) -> str:
    return f"{d['median'] * scale:.{digits}f} [{d['min'] * scale:.{digits}f}, {d['max'] * scale:.{digits}f}]"


def report(result: dict) -> None:
    print(f"\n{result['environment']['cpu']} ({result['environment']['cores']} cores), {result['device']}; "
          f"load average {result['environment']['load_average']} at start; median [min, max] over rounds")
    for size, r in result["training"].items():
        print(f"\ntraining, {size}, batch {r['batch']}:")
        print(f"  {'':14}{'params':>8}  {'img/s':>24}  {'GFLOP/img':>9}  {'GFLOP/s':>9}  {'MFU':>6}  {'peak MiB':>8}")
        for name, e in r["contenders"].items():
            mfu = f"{e['mfu']['median']:.1%}" if "mfu" in e else "-"
            mem = f"{e['peak_memory']['bytes'] / 2**20:.0f}" if "peak_memory" in e else "-"
            print(f"  {name:14}{e['params'] / 1e6:7.1f}M  {fmt(e['img_per_s']):>24}  {e['gflop_per_img']:9.2f}  "
                  f"{e['tflop_per_s']['median'] * 1e3:9.4g}  {mfu:>6}  {mem:>8}")
        for name, v in r["ratios"].items():
            print(f"  throughput {name}: {fmt(v)}")
    if "sampling" in result:
        r = result["sampling"]
        agree = "n/a under bf16" if r["max_abs_diff_same_net"] is None else f"{r['max_abs_diff_same_net']:.1e}"
        print(f"\nsampling, {r['network']} network, batch {r['batch']}, {r['steps']} steps "
              f"(max |x_0 difference| of the two samplers on the same net and noise: {agree}):")
        for name in r["ms_per_step"]:
            print(f"  {name:30} ms/step {fmt(r['ms_per_step'][name]):>24}   "
                  f"img/s at 1000 steps {fmt(r['img_per_s_1000_steps'][name], digits=3):>24}")
        for name, v in r["ratios"].items():
            print(f"  throughput {name}: {fmt(v)}")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=positive, help="alternating rounds (default 5; --quick: 2)")
    p.add_argument("--quick", action="store_true", help="smoke test: the small network, batch 2, 1 step, 5 sampling steps, 2 rounds")
    p.add_argument("--sizes", default=None, help="comma-separated training sizes from " + ", ".join(SIZES)
                   + " (default: " + "; ".join(f"{d} {v}" for d, v in DEFAULT_SIZES.items()) + "; --quick: small)")
    p.add_argument("--batch", type=positive, help="training batch (default per device and size: "
                   + ", ".join(f"{d}/{s} {v[0]}" for (d, s), v in TRAIN.items()) + ")")
    p.add_argument("--steps", type=positive, help="timed training steps per round")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before the rounds (default 1 on CPU, 5 on CUDA)")
    p.add_argument("--sample-size", choices=tuple(SIZES), help="sampling network (default: small on CPU, cifar10 on CUDA)")
    p.add_argument("--sample-batch", type=positive, help="sampling batch (default 4 on CPU, 128 on CUDA)")
    p.add_argument("--sample-steps", type=positive, help="sampling chain length T (default 100 on CPU, 1000 on CUDA)")
    p.add_argument("--no-sampling", action="store_true")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    for flag, what in (("amp", "bf16 autocast for every network"), ("compile", "torch.compile of ours"),
                       ("channels-last", "channels_last memory format for ours")):
        p.add_argument(f"--{flag}", choices=("auto", "on", "off"), default="auto", help=f"{what} (auto: on with CUDA"
                       + ("; on a CPU, ours as ddpm.train runs it: bf16 where native)" if flag == "amp" else ")"))
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the accelerator's dense bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--threads", type=positive, help="torch CPU threads (default: torch's choice, usually the cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--json", type=Path, default=Path(__file__).with_name("results.json"), help="results are appended here")
    args = p.parse_args(argv)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    sizes = (args.sizes or ("small" if args.quick else DEFAULT_SIZES[args.device])).split(",")
    if bad := [s for s in sizes if s not in SIZES]:
        p.error(f"unknown size(s) {bad} in --sizes; choose from {list(SIZES)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    args.warmup = args.warmup if args.warmup is not None else (5 if dev.type == "cuda" and not args.quick else 1)
    pol = policy(args, dev)
    result = {"when": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "device": args.device, "quick": args.quick, "policy": pol, "repeats": args.repeats,
              "environment": environment(dev), "training": {}}
    if result["environment"]["load_average"][0] > result["environment"]["cores"]:
        print(f"warning: load average {result['environment']['load_average'][0]:.1f} exceeds the "
              f"{result['environment']['cores']} cores: timings are distorted", file=sys.stderr)
    for size in sizes:
        result["training"][size] = bench_training(size, args, dev, pol)
    if not args.no_sampling:
        result["sampling"] = bench_sampling(args, dev, pol)
    result["load_average_at_end"], result["seconds"] = os.getloadavg(), round(time.perf_counter() - START)
    report(result)
    runs = json.loads(args.json.read_text()) if args.json.exists() else []
    args.json.write_text(json.dumps(runs + [result], indent=1) + "\n")
    print(f"\n{result['seconds']} s in all; load average at the end {result['load_average_at_end']}; appended to {args.json}")
    return result


if __name__ == "__main__":
    main()
