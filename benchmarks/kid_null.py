"""The real-vs-real check of chapters 7, 8 and 10 under its null: how often two random halves of the 359
held-out digits give a KID beyond k of its own jackknife standard errors.

The chapters split the held-out digits into halves at random and assert that ``ddpm.kid`` of the halves, in the
features of a digits classifier trained with the chapter's seed, is near zero (KID is unbiased). Both halves
come from one set, so the statistic's law is exactly the law over random splits; this script draws it. For each
seed it trains the classifier as the chapters do (``ddpm.train_digits_classifier(seed=seed)``), then draws
``splits`` random halvings (179 and 180 digits) and records z = KID / SE for each: its quantiles, extremes and
the number of splits beyond each bar.

    python benchmarks/kid_null.py --seeds 0 1 2 3 4 5 6 7 8 9 --json kid_null.jsonl
    python benchmarks/kid_null.py --summarize kid_null.jsonl        # the table of KID_NULL.md
"""

from __future__ import annotations

import time

import scipy.stats
import torch

import ddpm
from seeds import main

BARS = (-8, -7, -6, -5, -4, -3, 3, 4)


def one_seed(seed: int, splits: int) -> dict:
    tick = time.perf_counter()
    test = ddpm.digits("test")
    real = ddpm.digit_features(ddpm.train_digits_classifier(seed=seed), test)
    gen, half = torch.Generator().manual_seed(seed), len(test) // 2
    z = []
    for _ in range(splits):
        order = torch.randperm(len(test), generator=gen)
        estimate = ddpm.kid(real[order[:half]], real[order[half:]])
        z.append(estimate.mean / estimate.se)
    z = torch.tensor(z, dtype=torch.float64)
    quantiles = (0.0001, 0.001, 0.01, 0.5, 0.99, 0.999, 0.9999)
    return {"seed": seed, "splits": splits, "mean": z.mean().item(), "sd": z.std().item(),
            "min": z.min().item(), "max": z.max().item(),
            "quantiles": {str(q): torch.quantile(z, q).item() for q in quantiles},
            "below": {str(b): int((z < b).sum()) for b in BARS if b < 0},
            "above": {str(b): int((z > b).sum()) for b in BARS if b > 0},
            "seconds": time.perf_counter() - tick}


def summarize(rows: list[dict]) -> str:
    n = sum(r["splits"] for r in rows)
    lines = [f"{len(rows)} seeds ({', '.join(str(r['seed']) for r in rows)}), {n} random halvings in all; "
             f"z = KID / its jackknife SE", "",
             f"- mean of z {sum(r['mean'] * r['splits'] for r in rows) / n:+.3f}; SD within a seed "
             f"{min(r['sd'] for r in rows):.3f} to {max(r['sd'] for r in rows):.3f}",
             f"- smallest z {min(r['min'] for r in rows):+.2f}, largest {max(r['max'] for r in rows):+.2f}", "",
             "| bar | splits beyond it | rate | 95% upper limit of the rate |", "|---|---|---|---|"]
    for b in BARS:
        side, word = ("below", "z < ") if b < 0 else ("above", "z > ")
        k = sum(r[side][str(b)] for r in rows)
        upper = scipy.stats.beta.ppf(0.95, k + 1, n - k)   # Clopper-Pearson, one-sided 95%
        lines.append(f"| {word}{b} | {k} | {k / n:.1e} | {upper:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, splits=2000)
