"""The command line: python -m ddpm train | sample | evaluate | export (each with --help).

    python -m ddpm train --data digits                          # a free 2-core CPU: about 4.5 minutes
    python -m ddpm train --data celeba --data-dir DIR           # a GPU; torchrun --nproc_per_node N for several
    python -m ddpm sample --checkpoint runs/ddpm                # a PNG grid from the EMA weights
    python -m ddpm sample --num-samples 50000 --out-dir DIR --npy x.npy   # in batches, for FID
    python -m ddpm sample --checkpoint RUN --class 3 --guidance 2   # a --class-conditional run's class 3, guided
    python -m ddpm evaluate --checkpoint runs/ddpm --num-images 64        # bits/dim on held-out data
    python -m ddpm export --checkpoint runs/ddpm --out my-ddpm  # a folder diffusers' DDPMPipeline reads
    python -m ddpm sample --checkpoint google/ddpm-cifar10-32   # a released model (pip install huggingface_hub)

train takes every field of ddpm.TrainConfig as a flag, or from --config FILE (.json or .toml); flags
override the file. Bad input gets a one-line "error: ..." and exit code 2, a failed run exit code 1,
Ctrl-C exit code 130.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import fields
from pathlib import Path

import torch

from .checkpoint import unwritable
from .config import TrainConfig, native_bf16, resolve_device
from .schedule import VARIANCES
from .train import train

DEFAULT_CHECKPOINT = str(Path(TrainConfig.out_dir) / "checkpoint.pt")  # where `train` writes by default
GRID_MAX = 64  # the PNG grid shows at most the first 64 samples


def _field_type(f) -> type:
    """The Python type a TrainConfig field holds: its annotation without ``| None``."""
    return {"bool": bool, "int": int, "float": float}.get(str(f.type).replace(" | None", ""), str)


def _parse_file(path: Path):
    """The contents of a .json or .toml file; TOML through tomllib, or tomli on Python 3.10."""
    if path.suffix == ".json":
        loads, error = json.loads, json.JSONDecodeError
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
            try:
                import tomli as tomllib
            except ModuleNotFoundError:
                raise ValueError(f"reading {path} needs Python 3.11 or `pip install tomli`; or use a .json "
                                 "config") from None
        loads, error = tomllib.loads, tomllib.TOMLDecodeError
    try:
        return loads(path.read_text())
    except error as e:
        raise ValueError(f"{path} is not valid {path.suffix[1:].upper()}: {e}") from None


def read_config_file(path) -> dict:
    """The settings in a .json or .toml file, checked against TrainConfig's fields and types."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    if path.suffix not in (".json", ".toml"):
        raise ValueError(f"the config file must be .json or .toml, got {path.name}")
    raw = _parse_file(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the top level must be a table of settings such as {{\"steps\": 2000}}, "
                         f"got a {type(raw).__name__}")
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


# ---------------------------------------------------------------------------------------------- train

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
    config = TrainConfig(**settings)
    resolve_device(config.device)  # an unknown or absent device is a usage error, before any work
    result = train(config, progress=not args.quiet)
    tail = result.losses[-100:]
    loss = f", mean loss of the last {len(tail)} steps {sum(tail) / len(tail):.4f}" if tail else ""
    written = "checkpoint, log.csv and samples/" if result.config.sample_every else "checkpoint and log.csv"
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process speaks
        print(f"trained {result.step} steps{loss}; {written} in {result.out_dir}")
    return 0


# ------------------------------------------------------------------------------------- sample, evaluate

def _common(p, draws: bool = True) -> None:
    """The flags of the commands that read a model; ``draws``: those that also draw noise on a device."""
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help="a checkpoint.pt written by train or the run folder that holds it, or a model in "
                   "diffusers' layout: a folder, or a Hub name such as google/ddpm-cifar10-32 (needs pip install "
                   "huggingface_hub) [%(default)s]")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw weights, not their EMA")
    p.add_argument("--variance", choices=VARIANCES, default=None,
                   help="σ_t² = β_t (fixedlarge) or β̃_t (fixedsmall) [the model's own: a released model's "
                   "scheduler config; for a checkpoint, fixedsmall at 256x256, else fixedlarge]")
    if not draws:
        return
    p.add_argument("--seed", type=int, default=0, help="seed of the noise [%(default)s]")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else cpu), cpu, cuda, cuda:1, mps "
                   "[%(default)s]")


def _load(args, device: torch.device):
    """:func:`ddpm.load` of ``--checkpoint``, with a missing Hub library or network as a usage error."""
    from .loading import load

    try:
        return load(args.checkpoint, device, args.ema)
    except (ConnectionError, ImportError) as e:
        raise ValueError(str(e)) from None


def _writable_folder(folder: Path, flag: str, path) -> None:
    """Raise a ValueError unless ``folder`` is, or can be created as, a folder this process may write in."""
    if why := unwritable(folder):
        raise ValueError(f"{flag} {path} cannot be written: {why}")


def default_grid_path(checkpoint) -> Path:
    """Where ``sample`` writes its grid without --out: beside a checkpoint.pt, inside a run folder or a
    diffusers folder, and for a Hub name ``owner/name`` as name_samples.png in the current folder."""
    from .loading import is_hub_name

    path = Path(checkpoint).expanduser()
    if is_hub_name(checkpoint):
        return Path(f"{path.name}_samples.png")
    return (path if path.is_dir() else path.parent) / "samples.png"


def _check_outputs(args) -> tuple[Path, Path | None, Path | None]:
    """The grid PNG, the .npy and the PNG folder of ``sample``, checked before any sampling (nothing is created)."""
    from PIL import Image

    out = Path(args.out) if args.out else default_grid_path(args.checkpoint)
    npy, folder = (Path(p) if p else None for p in (args.npy, args.out_dir))
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name such as {out / 'samples.png'}")
    if not out.suffix:
        raise ValueError(f"--out {out} has no file extension; use a name such as {out}.png")
    if Image.registered_extensions().get(out.suffix.lower()) not in Image.SAVE:
        raise ValueError(f"--out {out}: cannot write {out.suffix} images; use .png (or .jpg, .bmp, .tif)")
    _writable_folder(out.parent, "--out", out)
    if npy is not None:
        if npy.is_dir():
            raise ValueError(f"--npy {npy} is a folder; give a file name such as {npy / 'samples.npy'}")
        if npy.suffix != ".npy":
            raise ValueError(f"--npy {npy}: the file name must end in .npy")
        _writable_folder(npy.parent, "--npy", npy)
    if folder is not None:
        _writable_folder(folder, "--out-dir", folder)
    return out, npy, folder


class _SampleFiles:
    """Where ``sample`` writes each batch as soon as it is drawn: the grid of the first ``GRID_MAX`` samples,
    one PNG per sample in a folder, and the .npy array (filled in a hidden partial file, renamed when full)."""

    def __init__(self, out: Path, npy: Path | None, folder: Path | None, n_all: int, shape):
        self.out, self.npy, self.folder, self.n_all, self.shape = out, npy, folder, n_all, tuple(shape)
        self.partial = npy.with_name(f".{npy.name}.partial") if npy else None
        self.n_grid, self.grid, self.array, self.done = min(n_all, GRID_MAX), [], None, 0

    def write(self, x: torch.Tensor) -> None:
        """Append a batch of uint8 samples [n, C, H, W]."""
        import numpy as np
        from PIL import Image

        from .levels import save_grid

        first, n = self.done, len(x)
        if self.npy is not None:
            if self.array is None:
                self.npy.parent.mkdir(parents=True, exist_ok=True)
                self.array = np.lib.format.open_memmap(self.partial, "w+", np.uint8, (self.n_all, *self.shape))
            self.array[first:first + n] = x.numpy()
            self.array.flush()
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            images = x.permute(0, 2, 3, 1).numpy()  # [n, H, W, C], as PIL wants them
            digits = max(6, len(str(self.n_all - 1)))
            for i, image in enumerate(images[..., 0] if self.shape[0] == 1 else images):
                Image.fromarray(image).save(self.folder / f"{first + i:0{digits}d}.png")
        if first < self.n_grid:
            self.grid.append(x[:self.n_grid - first])
            if first + n >= self.n_grid:
                save_grid(torch.cat(self.grid), self.out)
        self.done += n

    def written(self) -> list[str]:
        """The files and folders that hold samples so far."""
        return [str(p) for p in (self.folder, self.partial) if p is not None and self.done] + \
            [str(self.out)] * (self.done >= self.n_grid)

    def close(self, complete: bool) -> None:
        """Give the .npy its name if every row is in; else remove it, unless some rows are worth keeping."""
        self.array = None  # closes the memory map
        if self.partial is not None and complete:
            os.replace(self.partial, self.npy)
        elif self.partial is not None and not self.done:
            self.partial.unlink(missing_ok=True)


def _guided(args, loaded):
    """The ε-model ``sample`` draws from: the loaded one (a class-conditional network's null class, so
    unconditional samples), or with --class, classifier-free guidance towards it with weight --guidance."""
    from .guidance import classifier_free_guidance

    K = getattr(loaded.network, "num_classes", None)
    if args.label is None:
        if args.guidance is not None:
            raise ValueError("--guidance needs --class, the class it guides towards")
        return loaded.model
    if K is None:
        raise ValueError(f"{args.checkpoint} is not class-conditional, so --class has no meaning: sample without "
                         "it, or train with --class-conditional")
    if not 0 <= args.label < K:
        raise ValueError(f"--class {args.label}: {args.checkpoint} has classes 0..{K - 1}")
    return classifier_free_guidance(loaded.network, args.label, args.guidance or 0.0, schedule=loaded.schedule,
                                    parameterization=loaded.parameterization)


def _run_sample(args) -> int:
    from tqdm.auto import tqdm

    from . import sampling
    from .batches import step_seed
    from .levels import to_uint8

    n_all, size = args.num_samples, args.batch_size
    if n_all < 1 or size < 1:
        raise ValueError(f"--num-samples and --batch-size must be at least 1, got {n_all} and {size}")
    out, npy, folder = _check_outputs(args)
    device = resolve_device(args.device)
    loaded = _load(args, device)
    model, s, shape, variance = _guided(args, loaded), loaded.schedule, loaded.shape, args.variance or loaded.variance
    bf16 = native_bf16(device) if args.bf16 is None else args.bf16
    files, complete = _SampleFiles(out, npy, folder, n_all, shape), False
    try:
        with tqdm(total=n_all, unit="img", desc="sample") as bar:
            for k, first in enumerate(range(0, n_all, size)):
                g = torch.Generator(device).manual_seed(step_seed(args.seed, k))  # from --seed and k only
                x = sampling.sample(s, model, (min(size, n_all - first), *shape), variance, generator=g,
                                    device=device, progress=True, bf16=bf16)
                if not torch.isfinite(x).all():
                    raise FloatingPointError(f"the samples of batch {k} are not finite (NaN or Inf), so they were "
                                             f"not written: {args.checkpoint}'s weights are not usable")
                files.write(to_uint8(x.cpu()))
                bar.update(len(x))
        complete = True
    except KeyboardInterrupt:  # keep what was written, and say where
        if files.done:
            raise KeyboardInterrupt(f"{files.done} of {n_all} samples drawn before Ctrl-C; written to "
                                    f"{', '.join(files.written()) or 'nothing yet'}") from None
        raise
    except BaseException:
        files.done = 0  # rows of an unusable run are not worth keeping
        raise
    finally:
        files.close(complete)
    print(f"wrote the first {files.n_grid} of {n_all} samples as a grid to {out}")
    if npy is not None:
        print(f"wrote all {n_all} as uint8 [N, C, H, W] to {npy}")
    if folder is not None:
        print(f"wrote all {n_all} as PNGs to {folder}")
    return 0


def _run_evaluate(args) -> int:
    from . import evaluate
    from .data import get_dataset

    if args.num_images < 2:
        raise ValueError(f"--num-images must be at least 2 (for a standard error), got {args.num_images}")
    device = resolve_device(args.device)
    loaded = _load(args, device)
    model, s, variance, shape, config = loaded.model, loaded.schedule, loaded.variance, loaded.shape, loaded.config
    name = args.data or (config.data if config else None)
    if name is None:
        raise ValueError(f"{args.checkpoint} does not say what it was trained on: pass --data (digits, celeba, "
                         "cifar10 or the path of a .npy array; celeba and cifar10 also need --data-dir)")
    data = get_dataset(name, args.split, args.data_dir or (config.data_dir if config else None), shape[-1])
    n = min(args.num_images, len(data))
    x0 = torch.stack([data[i] for i in range(n)]).to(device)
    g = torch.Generator(device).manual_seed(args.seed)
    result = evaluate.bits_per_dim(s, model, x0, args.variance or variance, batch_size=args.batch_size, generator=g,
                                   progress=True)
    print(f"bits/dim on {n} {args.split} images of {name} (mean ± standard error):")
    for name, part in [("total", result.total), ("L_T", result.prior), ("sum L_(t-1), t>=2", result.diffusion),
                       ("L_0", result.decoder)]:
        print(f"  {name:<18} {part.mean:.5g} ± {part.se:.2g}")
    return 0


def _run_export(args) -> int:
    from .pretrained import save_pretrained

    loaded = _load(args, torch.device("cpu"))
    folder = save_pretrained(loaded.network, args.out, loaded.schedule.to("cpu"), args.variance or loaded.variance,
                             parameterization=loaded.parameterization)
    print(f"wrote {folder}: a diffusers pipeline folder (model_index.json, unet/, scheduler/); load it with "
          f"diffusers.DDPMPipeline.from_pretrained({str(folder)!r}) or ddpm.load({str(folder)!r})")
    K = loaded.network.num_classes
    if K is not None:
        print(f"its UNet2DModel is class-conditional: call it with class_labels in 0..{K - 1}, or {K} for the null "
              "class (unconditional); DDPMPipeline passes none")
    return 0


def parser() -> argparse.ArgumentParser:
    invoked = Path(sys.argv[0]).name if sys.argv else ""
    p = argparse.ArgumentParser(prog="ddpm" if invoked == "ddpm" else "python -m ddpm",  # the console script
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,sample,evaluate,export}")
    _train_parser(sub)
    ps = sub.add_parser("sample", help="draw samples from a checkpoint (Algorithm 2) into a PNG grid, PNGs, a .npy",
                        description="Algorithm 2 with a trained network, batch by batch; each batch is written "
                        "as soon as it is drawn. Defaults are in [brackets].")
    _common(ps)
    ps.add_argument("--num-samples", type=int, default=64, help="how many images [%(default)s]")
    ps.add_argument("--batch-size", type=int, default=128,
                    help="images drawn at once; lower it if memory runs out [%(default)s]")
    ps.add_argument("--out", help=f"the grid of the first {GRID_MAX} samples, a PNG [samples.png next to the "
                    "checkpoint]")
    ps.add_argument("--out-dir", help="also write every sample as a PNG into this folder: 000000.png, ...")
    ps.add_argument("--npy", help="also write every sample into this uint8 .npy array [N, C, H, W]")
    ps.add_argument("--class", dest="label", type=int, metavar="K",
                    help="draw class K of a class-conditional checkpoint (train --class-conditional) [none: "
                    "unconditional samples, the null class]")
    ps.add_argument("--guidance", type=float, metavar="W",
                    help="with --class: classifier-free guidance weight w >= 0 (Ho & Salimans 2022), "
                    "(1 + w) eps(x, t, K) - w eps(x, t); 0 is the conditional model alone [0]")
    ps.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="run the network in bfloat16 autocast, the step's math in float32 [on where the device "
                    "computes bf16 natively]")
    ps.set_defaults(run=_run_sample)
    pe = sub.add_parser("evaluate", help="bits/dim of held-out images: L_T, sum of L_(t-1), L_0 and their total",
                        description="The variational bound (Eq. 5) in bits/dim on the first N held-out images, "
                        "with its parts. Defaults are in [brackets].")
    _common(pe)
    pe.add_argument("--num-images", type=int, default=64, help="how many held-out images (the first N) [%(default)s]")
    pe.add_argument("--split", default="test", help="which split of the data [%(default)s]")
    pe.add_argument("--data", help="the data [the checkpoint's]")
    pe.add_argument("--data-dir", help="where the data is [the checkpoint's]")
    pe.add_argument("--batch-size", type=int, default=256, help="(image, t) pairs per network call [%(default)s]")
    pe.set_defaults(run=_run_evaluate)
    px = sub.add_parser("export", help="write a checkpoint as a diffusers pipeline folder (DDPMPipeline reads it)",
                        description="Write a trained network, its noise schedule and its sampling variance in "
                        "diffusers' layout: model_index.json, unet/ (config.json, safetensors weights), scheduler/, "
                        "whose prediction_type is what the network outputs: parameterization eps, x0 or v as "
                        "epsilon, sample or v_prediction (mu has no diffusers counterpart and is refused). "
                        "diffusers' UNet2DModel then computes at its timestep k = t - 1 what ddpm computes at the "
                        "paper's t. Defaults are in [brackets].")
    _common(px, draws=False)
    px.add_argument("--out", required=True, help="the folder to write (replaced whole if it holds a pipeline)")
    px.set_defaults(run=_run_export)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt as e:  # Ctrl-C: what was kept and how to go on, if the command knows
        print(f"stopped: {e}" if str(e) else "interrupted", file=sys.stderr)
        return 130
    except FloatingPointError as e:  # a loss or samples stopped being finite (NonFiniteLossError included)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, ImportError) as e:  # bad input: say what and how to fix it
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the run failed on the file system (a full disk, an unreadable image)
        print(f"error: {e.strerror if e.strerror and not e.filename else e}", file=sys.stderr)
        return 1
    except torch.cuda.OutOfMemoryError as e:
        print(f"error: out of GPU memory ({str(e).splitlines()[0]}); use a smaller --batch-size", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
