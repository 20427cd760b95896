"""The command line: ``python -m ddpm train | sample | evaluate`` (each with ``--help``).

    python -m ddpm train --data digits                          # a CPU, a few minutes
    python -m ddpm train --data celeba --data-dir DIR           # a GPU; torchrun --nproc_per_node N for several
    python -m ddpm sample --checkpoint runs/ddpm/checkpoint.pt  # a PNG grid from the EMA weights
    python -m ddpm evaluate --checkpoint runs/ddpm/checkpoint.pt --num-images 64   # bits/dim on held-out data

``train`` takes every field of :class:`ddpm.train.TrainConfig` as a flag, or from ``--config FILE``
(.json or .toml); flags override the file. Usage errors exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import torch

from .checkpoint import load_model
from .train import NonFiniteLossError, TrainConfig, train


def _field_type(f) -> type:
    """The Python type a TrainConfig field holds: its annotation without ``| None``."""
    return {"bool": bool, "int": int, "float": float}.get(str(f.type).replace(" | None", ""), str)


def read_config_file(path) -> dict:
    """The settings in a .json or .toml file, checked against TrainConfig's fields and types."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    if path.suffix not in (".json", ".toml"):
        raise ValueError(f"the config file must be .json or .toml, got {path.name}")
    try:
        raw = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid {path.suffix[1:].upper()}: {e}") from None
    types = {f.name: _field_type(f) for f in fields(TrainConfig)}
    settings = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in types:
            raise ValueError(f"{path}: unknown setting {key!r}; valid ones are {sorted(types)}")
        want = types[name]
        fits = value is None or (want is bool if isinstance(value, bool) else
                                 isinstance(value, (int, float)) if want is float else isinstance(value, want))
        if not fits:
            raise ValueError(f"{path}: {key} must be {want.__name__}, got {value!r}")
        settings[name] = float(value) if want is float and value is not None else value
    return settings


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a UNet with Algorithm 1 (torchrun it for several GPUs)",
                       description="Algorithm 1 of Ho et al. (2020): Adam, warm-up, clipping, EMA, checkpoints. "
                       "Several GPUs or machines: torchrun --nproc_per_node N -m ddpm train ...; --batch-size is "
                       "the global batch. Defaults are in [brackets] or depend on the data or device.")
    p.add_argument("--config", metavar="FILE", help="a .json or .toml file of settings (flags override it)")
    for f in fields(TrainConfig):
        kind, flag = _field_type(f), "--" + f.name.replace("_", "-")
        extra = dict(action=argparse.BooleanOptionalAction) if kind is bool else dict(type=kind, metavar=f.name.upper())
        shown = "" if f.default is None else f" [{f.default}]"
        p.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=f.metadata["help"] + shown, **extra)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    settings = read_config_file(args.config) if args.config else {}
    settings.update({f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    result = train(TrainConfig(**settings), progress=not args.quiet)
    tail = result.losses[-100:]
    loss = f", mean loss of the last {len(tail)} steps {sum(tail) / len(tail):.4f}" if tail else ""
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process speaks
        print(f"trained {result.step} steps{loss}; checkpoint, log.csv and samples/ in {result.out_dir}")
    return 0


def _common(p) -> None:
    p.add_argument("--checkpoint", default="runs/ddpm/checkpoint.pt", help="a checkpoint.pt written by train")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw weights, not their EMA")
    p.add_argument("--variance", choices=("fixedlarge", "fixedsmall"), default="fixedlarge",
                   help="σ_t² = β_t (fixedlarge) or β̃_t (fixedsmall)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")


def _device(name: str) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)


def _run_sample(args) -> int:
    from torchvision.utils import save_image

    from .sampling import sample
    from .schedule import NoiseSchedule

    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be at least 1, got {args.num_samples}")
    device = _device(args.device)
    model, config, shape = load_model(args.checkpoint, args.ema, device)
    s = NoiseSchedule.linear(config.T, config.beta_1, config.beta_T).to(device)
    g = torch.Generator(device).manual_seed(args.seed)
    x = sample(s, model, (args.num_samples, *shape), args.variance, generator=g, device=device, progress=True)
    out = Path(args.out or Path(args.checkpoint).parent / "samples.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image((x + 1) / 2, out, nrow=math.ceil(math.sqrt(args.num_samples)))
    print(f"wrote {args.num_samples} samples to {out}")
    if args.npy:
        import numpy as np

        from .levels import to_uint8
        np.save(args.npy, to_uint8(x.cpu()).numpy())
        print(f"wrote them as uint8 [N, C, H, W] to {args.npy}")
    return 0


def _run_evaluate(args) -> int:
    from .data import get_dataset
    from .evaluate import bits_per_dim
    from .schedule import NoiseSchedule

    if args.num_images < 2:
        raise ValueError(f"--num-images must be at least 2 (for a standard error), got {args.num_images}")
    device = _device(args.device)
    model, config, shape = load_model(args.checkpoint, args.ema, device)
    data = get_dataset(args.data or config.data, args.split, args.data_dir or config.data_dir, shape[-1])
    n = min(args.num_images, len(data))
    x0 = torch.stack([data[i] for i in range(n)]).to(device)
    s = NoiseSchedule.linear(config.T, config.beta_1, config.beta_T).to(device)
    g = torch.Generator(device).manual_seed(args.seed)
    result = bits_per_dim(s, model, x0, args.variance, batch_size=args.batch_size, generator=g, progress=True)
    print(f"bits/dim on {n} {args.split} images of {args.data or config.data} (mean ± standard error):")
    for name, part in [("total", result.total), ("L_T", result.prior), ("sum L_(t-1), t>=2", result.diffusion),
                       ("L_0", result.decoder)]:
        print(f"  {name:<18} {part.mean:.5g} ± {part.se:.2g}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ddpm", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,sample,evaluate}")
    _train_parser(sub)
    ps = sub.add_parser("sample", help="draw samples from a checkpoint (Algorithm 2) into a PNG grid")
    _common(ps)
    ps.add_argument("--num-samples", type=int, default=64, help="how many images")
    ps.add_argument("--out", help="the PNG to write (default: samples.png next to the checkpoint)")
    ps.add_argument("--npy", help="also save the samples as a uint8 .npy array [N, C, H, W]")
    ps.set_defaults(run=_run_sample)
    pe = sub.add_parser("evaluate", help="bits/dim of held-out images: L_T, sum of L_(t-1), L_0 and their total")
    _common(pe)
    pe.add_argument("--num-images", type=int, default=64, help="how many held-out images (the first N)")
    pe.add_argument("--split", default="test", help="which split of the data")
    pe.add_argument("--data", help="the data (default: the checkpoint's)")
    pe.add_argument("--data-dir", help="where the data is (default: the checkpoint's)")
    pe.add_argument("--batch-size", type=int, default=256, help="(image, t) pairs per network call")
    pe.set_defaults(run=_run_evaluate)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
