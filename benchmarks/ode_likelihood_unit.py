"""The unit test of the probability-flow ODE's log-likelihood (tests/test_sde.py) over many seeds: where its
bars sit in the law of its statistics.

The test draws 200 points of a two-component 2-D mixture, integrates the ODE with RK4 and the exact score in
n = 100 and 200 steps, and compares the log-likelihood with the true log-density. It reads RK4's order from
the median error over points (the maximum is set by the few points whose paths pass between components: an
earlier version that read the order off the maximum over 40 points at 25 and 50 steps failed a test run with
an observed ratio of 7.8 against a bar of 8). Each seed draws the points from a generator with that seed.

    python benchmarks/ode_likelihood_unit.py --seeds $(seq 0 299) --json ode_likelihood_unit.jsonl
    python benchmarks/ode_likelihood_unit.py --summarize ode_likelihood_unit.jsonl
"""

from __future__ import annotations

import math

import torch

import ddpm
from ddpm.sde import MixtureScore, VPSDE, ode_log_likelihood
from seeds import main, mean_se

STEPS = (100, 200)


def one_seed(seed: int, points: int) -> dict:
    vp = VPSDE.linear()
    mixture = ddpm.GaussianMixture(ddpm.NoiseSchedule.linear(10), [[-1.0, 0.0], [1.0, 0.5]], [0.3, 0.5])
    score = MixtureScore(mixture, vp)
    x0 = mixture.sample(points, torch.Generator().manual_seed(seed))
    true_ll = mixture.log_density(x0, 0)
    errors = [(ode_log_likelihood(vp, score, x0, n, lambda x: score.log_density(x, 1.0)) - true_ll).abs()
              for n in STEPS]
    median = [e.median().item() for e in errors]
    return {"seed": seed, "points": points, "steps": list(STEPS), "median": median,
            "max": [e.max().item() for e in errors], "order_median": math.log2(median[0] / median[1])}


def summarize(rows: list[dict]) -> str:
    order = torch.tensor([r["order_median"] for r in rows])
    return "\n".join([
        f"{len(rows)} seeds, {rows[0]['points']} points, RK4 in {rows[0]['steps']} steps; mean ± standard error "
        "over seeds (smallest to largest)",
        "",
        f"- order from the median error: {mean_se(order.tolist())}, SD {order.std():.3f}; the test's bar of 3 "
        f"lies {(order.mean() - 3) / order.std():.1f} SD below the mean",
        f"- median error at {rows[0]['steps'][1]} steps: {spread([r['median'][1] for r in rows])}; bar 1e-7",
        f"- largest error at {rows[0]['steps'][1]} steps: {spread([r['max'][1] for r in rows])}; bar 1e-5"])


def spread(values: list[float]) -> str:
    """Mean, SD, smallest and largest, for numbers too small for mean_se's fixed decimals."""
    v = torch.tensor(values, dtype=torch.float64)
    return f"mean {v.mean():.2e}, SD {v.std():.2e} ({v.min():.2e} to {v.max():.2e})"


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, points=200)
