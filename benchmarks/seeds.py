"""What the seed studies share: their command line, one JSON line per seed, the mean ± standard error over
seeds that their summaries print, and the chapters' two-sample MMD²."""

from __future__ import annotations

import argparse
import json
from typing import Callable

import torch


def mean_se(values, digits: int = 2) -> str:
    """"mean ± standard error over seeds (smallest to largest)"."""
    v = torch.tensor(values, dtype=torch.float64)
    return f"{v.mean():.{digits}f} ± {v.std() / len(v) ** 0.5:.{digits}f} ({v.min():.{digits}f} to {v.max():.{digits}f})"


def read_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(doc: str, one_seed: Callable[..., dict], summarize: Callable[[list[dict]], str], **options) -> None:
    """Parse --seeds, --json, --summarize and ``options`` (name → default); run ``one_seed(seed, **options)``
    per seed on one thread, printing and appending each row; or print ``summarize`` of a finished file."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    for name, default in options.items():
        p.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    p.add_argument("--json", help="append one line per seed to this file")
    p.add_argument("--summarize", metavar="JSONL", help="print the summary table of a finished run and exit")
    a = p.parse_args()
    if a.summarize:
        print(summarize(read_rows(a.summarize)))
        return
    torch.set_num_threads(1)
    for seed in a.seeds:
        row = one_seed(seed, **{name: getattr(a, name) for name in options})
        print(json.dumps(row), flush=True)
        if a.json:
            with open(a.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


def mmd2(x, y, h: float = 0.3) -> float:
    """Chapters 4's and 5's MMD² between two samples (a V-statistic), Gaussian kernel of length scale h."""
    kernel = lambda a, b: torch.exp(-torch.cdist(a, b).pow(2) / (2 * h**2)).mean()
    return (kernel(x, x) + kernel(y, y) - 2 * kernel(x, y)).item()
