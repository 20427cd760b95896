"""Chapter 11's likelihood check over many draws of its 500 points: the order of RK4 read from the mean error
over points, and from the median.

The chapter integrates the probability-flow ODE with the exact score of the 8-Gaussian mixture and compares the
log-likelihood with the true log-density at 500 points, for 8 to 256 RK4 steps. The mean error over points is
dominated by a few points whose paths pass between components; the median is not. For each seed this draws
500 points from a generator with that seed (not the chapter's order of draws: the law of the statistic is the
same) and records both errors at every step count and the observed orders per doubling.

    python benchmarks/ode_likelihood_order.py --seeds 0 1 ... 24 --json ode_likelihood_order.jsonl
    python benchmarks/ode_likelihood_order.py --summarize ode_likelihood_order.jsonl
"""

from __future__ import annotations

import math

import torch

import ddpm
from ddpm.sde import MixtureScore, VPSDE, ode_log_likelihood
from seeds import main, mean_se

STEPS = [8, 16, 32, 64, 128, 256]


def orders(errors: list[float]) -> list[float]:
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


def one_seed(seed: int, points: int) -> dict:
    vp = VPSDE.linear(0.1, 20.0)
    mixture = ddpm.GaussianMixture.gaussians8(ddpm.NoiseSchedule.linear(1000))
    score = MixtureScore(mixture, vp)
    x0 = mixture.sample(points, torch.Generator().manual_seed(seed))
    true_ll = mixture.log_density(x0, 0)
    errors = torch.stack([(ode_log_likelihood(vp, score, x0, k, lambda x: score.log_density(x, 1.0))
                           - true_ll).abs() for k in STEPS])
    mean, median = errors.mean(1).tolist(), errors.median(1).values.tolist()
    return {"seed": seed, "points": points, "steps": STEPS, "mean": mean, "median": median,
            "order_mean": orders(mean), "order_median": orders(median)}


def summarize(rows: list[dict]) -> str:
    low = lambda key: [min(r[key][-2:]) for r in rows]
    return "\n".join([
        f"{len(rows)} seeds, {rows[0]['points']} points each; mean ± standard error over seeds (smallest to largest)",
        "",
        f"- smaller of the last two orders, from the mean error: {mean_se(low('order_mean'))}; below 3 in "
        f"{sum(v < 3 for v in low('order_mean'))}",
        f"- smaller of the last two orders, from the median error: {mean_se(low('order_median'))}",
        f"- median error at 256 steps: {mean_se([r['median'][-1] for r in rows], 9)}",
        f"- mean error at 256 steps: {mean_se([r['mean'][-1] for r in rows], 8)}"])


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, points=500)
