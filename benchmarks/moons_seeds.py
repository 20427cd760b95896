"""Chapter 4's two-sample check (the MMD of the trained network's samples against real moons), over seeds.

For each seed, exactly the chapter's computation in quick mode, up to and including its MMD cell, with the
same generator draws in the same order (so that the chapter's own seed gives the chapter's printed numbers):
the draws of the algebra checks before the network, the TinyEpsNet MLP trained with L_simple on two moons
(4000 steps of batch 512, Adam 5e-3 with a cosine decay, T = 100 with the paper's betas times 10), 1000
samples of Algorithm 2 against 1000 real points, K = 20 real-vs-real values of MMD² (pairs of 1000), and a
Gaussian with the real points' mean and covariance. It records both ratios the chapter's bar compares,
ours / largest real-vs-real and Gaussian / largest real-vs-real, so that the bar's false-alarm rate on each
side can be estimated.

    python benchmarks/moons_seeds.py --seeds 1 2 3 4 5 --json benchmarks/moons_seeds.jsonl
    python benchmarks/moons_seeds.py --summarize benchmarks/moons_seeds.jsonl
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

import ddpm
from seeds import main, mean_se, mmd2

K = 20  # real-vs-real pairs
FACTOR = 5  # the chapter's bar, in units of the largest real-vs-real value


class TinyEpsNet(nn.Module):
    """Chapter 4's ε_θ for 2-D points: an MLP on [x_t, sin(ω_k t), cos(ω_k t)]."""

    def __init__(self, T, width=128, depth=3, n_freqs=16):
        super().__init__()
        self.register_buffer("freqs",
                             torch.exp(torch.linspace(0, -math.log(T), n_freqs)))
        layers, d_in = [], 2 + 2 * n_freqs
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), nn.SiLU()]
            d_in = width
        self.net = nn.Sequential(*layers, nn.Linear(width, 2))

    def forward(self, x, t):
        angles = t[:, None].to(x.dtype) * self.freqs
        return self.net(torch.cat([x, angles.sin(), angles.cos()], dim=1))



def chapter_draws_before_the_network(gen: torch.Generator) -> None:
    """The generator draws of chapter 4's cells before the network (the Eq. 10 and Eq. 12
    checks and L_simple by hand): their values do not matter here, their order does."""
    D, n_t = 16, 7
    torch.rand(n_t, D, generator=gen, dtype=torch.float64)  # x0
    torch.randn(n_t, D, generator=gen, dtype=torch.float64)  # eps
    torch.randn(D, D, generator=gen, dtype=torch.float64)  # W of the linear predictor
    torch.randint(2, 1001, (n_t,), generator=gen)  # t for L_simple


def one_seed(seed: int, steps: int = 4000) -> dict:
    start = time.perf_counter()
    torch.manual_seed(seed)  # the network's initial weights
    gen = torch.Generator().manual_seed(seed)
    chapter_draws_before_the_network(gen)
    T = 100
    s = ddpm.NoiseSchedule.linear(T=T, beta_1=1e-4 * 1000 / T, beta_T=0.02 * 1000 / T)
    model = TinyEpsNet(T)
    train_x0 = ddpm.toy_2d("moons", 50_000, gen)
    batch = 512
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = []
    for _ in range(steps):
        x0_batch = train_x0[torch.randint(0, len(train_x0), (batch,), generator=gen)]
        loss = ddpm.l_simple(s, model, x0_batch, generator=gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
        losses.append(loss.item())
    model.eval()
    n = 1000
    kept = torch.linspace(T, 1, 30).round().long().unique().tolist()
    with torch.no_grad():
        samples = ddpm.sample_trajectory(s, model, (n, 2), steps=kept,
                                         clip_denoised=False, generator=gen).x0
    real = ddpm.toy_2d("moons", n, gen)
    real_vs_real = torch.tensor([mmd2(ddpm.toy_2d("moons", n, gen),
                                      ddpm.toy_2d("moons", n, gen)) for _ in range(K)])
    ours = mmd2(samples, real)
    covariance_root = torch.linalg.cholesky(torch.cov(real.T))
    gaussian_fit = real.mean(0) + torch.randn(n, 2, generator=gen) @ covariance_root.T
    baseline = mmd2(gaussian_fit, real)
    largest = real_vs_real.max().item()
    return {"seed": seed, "steps": steps, "n": n, "K": K,
            "loss_last_500": torch.tensor(losses[-500:]).mean().item(),
            "real_vs_real": real_vs_real.tolist(),
            "real_vs_real_median": real_vs_real.median().item(),
            "real_vs_real_max": largest,
            "mmd2_ours": ours, "mmd2_gaussian": baseline,
            "ours_over_max": ours / largest, "gaussian_over_max": baseline / largest,
            "ours_rank": int((real_vs_real < ours).sum()),
            "seconds": round(time.perf_counter() - start, 1)}


def normal_tail(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def log_fit(values) -> tuple[float, float]:
    """Mean and standard deviation (n - 1) of log(values)."""
    v = torch.tensor(values, dtype=torch.float64).log()
    return v.mean().item(), v.std().item()


class RealVsReal:
    """The distribution of one real-vs-real MMD² value, from all seeds' values pooled: the
    empirical one, with an exponential tail above its 90th percentile (the tail of a
    weighted sum of chi-squares, which MMD² between two samples of one distribution is);
    and of the largest of K such values."""

    def __init__(self, values, K: int, q: float = 0.9):
        self.v = torch.tensor(sorted(values), dtype=torch.float64)
        self.K, self.q = K, q
        self.u = self.v.quantile(q).item()
        self.scale = (self.v[self.v > self.u] - self.u).mean().item()

    def above(self, x: float) -> float:
        """P(one value > x)."""
        if x <= self.u:
            return (self.v > x).double().mean().item()
        return (1 - self.q) * math.exp(-(x - self.u) / self.scale)

    def largest_above(self, x: float) -> float:
        return 1 - (1 - self.above(x)) ** self.K

    def largest_atoms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The largest of K as a discrete distribution on the pooled values."""
        F = torch.arange(len(self.v) + 1, dtype=torch.float64) / len(self.v)
        return self.v, F[1:] ** self.K - F[:-1] ** self.K


def false_alarms(rows: list[dict], bar: float) -> tuple[float, float]:
    """P(ours > bar x largest) and P(Gaussian < bar x largest) when the three are
    independent, as they are in the chapter (the real-vs-real pairs are fresh draws): ours
    and the Gaussian's MMD² log-normal (fitted over seeds), the largest real-vs-real value
    from RealVsReal."""
    rvr = RealVsReal([x for r in rows for x in r["real_vs_real"]], rows[0]["K"])
    mu_o, sd_o = log_fit([r["mmd2_ours"] for r in rows])
    mu_g, sd_g = log_fit([r["mmd2_gaussian"] for r in rows])
    values, weights = rvr.largest_atoms()
    ours = sum(w * normal_tail((math.log(bar * m) - mu_o) / sd_o)
               for m, w in zip(values.tolist(), weights.tolist()))
    z = torch.linspace(-8, 8, 1601, dtype=torch.float64)
    w = torch.exp(-z**2 / 2)
    w = w / w.sum()
    gauss = sum(wi * rvr.largest_above(math.exp(mu_g + sd_g * zi) / bar)
                for zi, wi in zip(z.tolist(), w.tolist()))
    return ours, gauss


def log_skewness(values) -> float:
    v = torch.tensor(values, dtype=torch.float64).log()
    v = v - v.mean()
    return (v.pow(3).mean() / v.pow(2).mean() ** 1.5).item()


def summarize(rows: list[dict], factor: float = FACTOR) -> str:
    n = len(rows)
    ours = [r["ours_over_max"] for r in rows]
    gauss = [r["gaussian_over_max"] for r in rows]
    (mu_o, sd_o), (mu_g, sd_g) = log_fit(ours), log_fit(gauss)
    # the bar where both fitted tails are equally many SDs away (the geometric middle)
    middle = math.exp((mu_o * sd_g + mu_g * sd_o) / (sd_o + sd_g))
    rvr = RealVsReal([x for r in rows for x in r["real_vs_real"]], rows[0]["K"])
    lines = [f"{n} seeds ({', '.join(str(r['seed']) for r in rows)}); mean ± standard error "
             "over seeds (smallest to largest)", "",
             f"- L_simple over the last 500 steps: "
             f"{mean_se([r['loss_last_500'] for r in rows], 4)}",
             f"- real vs real, median of K = {rows[0]['K']} (x 1e-3): "
             f"{mean_se([1e3 * r['real_vs_real_median'] for r in rows], 2)}",
             f"- real vs real, largest of K (x 1e-3): "
             f"{mean_se([1e3 * r['real_vs_real_max'] for r in rows], 2)}",
             f"- largest over median of the K real-vs-real values: "
             f"{mean_se([r['real_vs_real_max'] / r['real_vs_real_median'] for r in rows])}",
             f"- our samples vs real (x 1e-3): "
             f"{mean_se([1e3 * r['mmd2_ours'] for r in rows], 2)}",
             f"- Gaussian fit vs real (x 1e-3): "
             f"{mean_se([1e3 * r['mmd2_gaussian'] for r in rows], 1)}",
             f"- ours / largest real-vs-real: {mean_se(ours)}",
             f"- Gaussian / largest real-vs-real: {mean_se(gauss)}",
             f"- seeds where ours is below the largest real-vs-real value: "
             f"{sum(r['ours_rank'] < r['K'] for r in rows)} of {n}",
             f"- seconds per seed: {mean_se([r['seconds'] for r in rows], 0)}", "",
             "1. Log-normal fit of each ratio over the seeds (mean and SD of its natural log), "
             "its largest observed |z|, and the false-alarm probability P(ours / largest > bar), "
             "P(Gaussian / largest < bar) of a bar:", "",
             f"- log(ours / largest): mean {mu_o:.3f}, SD {sd_o:.3f} (geometric mean "
             f"{math.exp(mu_o):.2f}); largest |z| over seeds "
             f"{max(abs(math.log(v) - mu_o) / sd_o for v in ours):.2f}, "
             f"skewness {log_skewness(ours):.2f}",
             f"- log(Gaussian / largest): mean {mu_g:.3f}, SD {sd_g:.3f} (geometric mean "
             f"{math.exp(mu_g):.2f}); largest |z| over seeds "
             f"{max(abs(math.log(v) - mu_g) / sd_g for v in gauss):.2f}, "
             f"skewness {log_skewness(gauss):.2f}",
             f"- the geometric middle, where both fitted tails are "
             f"{(math.log(middle) - mu_o) / sd_o:.2f} SDs away: {middle:.2f}"]
    bars = sorted({4.0, 5.0, float(factor)})
    for bar in bars:
        z_o, z_g = (math.log(bar) - mu_o) / sd_o, (mu_g - math.log(bar)) / sd_g
        lines.append(f"- bar {bar:g}: ours exceeds it at z = {z_o:.2f}, P = "
                     f"{normal_tail(z_o):.1e}; the Gaussian falls below it at z = {z_g:.2f}, "
                     f"P = {normal_tail(z_g):.1e}; observed: {sum(v > bar for v in ours)} and "
                     f"{sum(v < bar for v in gauss)} of {n}")
    counts = ", ".join(f"{x:g}: {int((rvr.v > x).sum())} vs {len(rvr.v) * rvr.above(x):.1f}"
                       for x in (3e-3, 3.5e-3, 4e-3, 4.5e-3))
    fits = []
    for key in ("mmd2_ours", "mmd2_gaussian"):
        mu, sd = log_fit([r[key] for r in rows])
        z = max(abs(math.log(r[key]) - mu) / sd for r in rows)
        fits.append(f"log SD {sd:.3f}, largest |z| {z:.2f}")
    lines += ["", "2. The three numbers separately (they are independent draws): ours and the "
              f"Gaussian's MMD² log-normal over seeds ({fits[0]}; {fits[1]}), each "
              "real-vs-real value from all "
              f"{len(rvr.v)} pooled, with an exponential tail above its 90th percentile "
              f"{rvr.u:.2e} (scale {rvr.scale:.2e}; values above x observed vs fitted, "
              f"{counts}):", ""]
    for bar in bars:
        p_o, p_g = false_alarms(rows, bar)
        lines.append(f"- bar {bar:g}: P(ours > bar x largest) = {p_o:.1e}, "
                     f"P(Gaussian < bar x largest) = {p_g:.1e}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, steps=4000)
