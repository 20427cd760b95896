"""Chapter 12's one-dimensional check over many seeds: guided samples against the sharpened density.

Two classes p(x | y = ±1) = N(±1, 0.5²) with equal weights; for class y = 1 and each guidance weight w,
Algorithm 2 (linear schedule, T = 1000, sigma² = beta, float64, no clipping) with the exact guided eps
draws n samples, and their mean is compared with the mean of the sharpened density
p(x | y) p(y | x)^w at t = 0, normalised on a fine grid, in standard errors of the sample mean: exactly the
chapter's cell, which asserts |gap| < 4.5 at w = 0 and gap > 20 for w > 0.

    python benchmarks/guidance_tilt_seeds.py --seeds $(seq 0 29) --json benchmarks/guidance_tilt_seeds.jsonl
    python benchmarks/guidance_tilt_seeds.py --summarize benchmarks/guidance_tilt_seeds.jsonl
"""

from __future__ import annotations

import math

import torch

import ddpm
from seeds import main, mean_se

WEIGHTS = (0.0, 1.0, 2.0, 4.0)
MEANS, SD = (-1.0, 1.0), 0.5


def one_seed(seed: int, n: int = 20_000) -> dict:
    s = ddpm.NoiseSchedule.linear(T=1000, beta_1=1e-4, beta_T=0.02)
    classes = [ddpm.GaussianMixture(s, [[m]], SD) for m in MEANS]
    mixture = ddpm.GaussianMixture(s, [[m] for m in MEANS], SD)
    laws = [*classes, mixture]

    class ExactEps(torch.nn.Module):
        num_classes = 2

        def forward(self, x, t, y=None):
            y = torch.full((len(x),), 2) if y is None else y
            root = (1 - s.alpha_bars[t]).sqrt()[:, None]
            out = torch.empty_like(x, dtype=torch.float64)
            for k, law in enumerate(laws):
                if (y == k).any():
                    out[y == k] = -root[y == k] * law.score(x[y == k], t[y == k])
            return out

    grid = torch.linspace(-4, 5, 90_001, dtype=torch.float64)
    log_n = lambda m: -0.5 * ((grid - m) / SD) ** 2
    log_mix = torch.logsumexp(torch.stack([log_n(m) for m in MEANS]), 0)
    row = {"seed": seed, "n": n, "gap_se": {}, "sd": {}, "sharpened_sd": {}}
    for w in WEIGHTS:
        g = torch.Generator().manual_seed(seed + 1)
        d = ddpm.sample(s, ddpm.classifier_free_guidance(ExactEps(), 1, w), (n, 1), generator=g,
                        dtype=torch.float64, clip_denoised=False)[:, 0]
        p = torch.softmax((1 + w) * log_n(MEANS[1]) - w * log_mix, 0)
        mean = (p * grid).sum().item()
        row["gap_se"][str(w)] = (d.mean().item() - mean) / (d.std().item() / math.sqrt(n))
        row["sd"][str(w)] = d.std().item()
        row["sharpened_sd"][str(w)] = ((p * grid**2).sum().item() - mean**2) ** 0.5
    return row


def summarize(rows: list[dict]) -> str:
    lines = [f"{len(rows)} seeds ({rows[0]['seed']} to {rows[-1]['seed']}), {rows[0]['n']} samples per w; "
             "mean ± standard error over seeds (smallest to largest)", "",
             "| w | guided mean minus sharpened mean, in SE | sd of the guided samples | sd of the sharpened density |",
             "|---|---|---|---|"]
    for w in rows[0]["gap_se"]:
        lines.append(f"| {w} | {mean_se([r['gap_se'][w] for r in rows], 1)} | {mean_se([r['sd'][w] for r in rows], 4)} "
                     f"| {rows[0]['sharpened_sd'][w]:.4f} |")
    z = torch.tensor([r["gap_se"]["0.0"] for r in rows])
    lines += ["", f"w = 0: standard deviation of the gap over seeds {z.std():.2f} (1 for an unbiased sampler "
              f"and a normal mean), largest |gap| {z.abs().max():.2f}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, n=20_000)
