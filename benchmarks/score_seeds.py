"""Chapter 5's trained score and its exact-score samplers, over several seeds.

For each seed, exactly the chapter's quick-mode computation: train the ScoreNet MLP with L_simple on the eight
Gaussians (3000 steps of batch 256, T = 100), measure its score against the mixture's exact one (median
relative error and angle at each t of the chapter's grid, next to the best Gaussian fit's error), and run the
MMD² comparison of samples from Algorithm 2 and annealed Langevin with the exact score. It records the numbers
the chapter's asserts compare with their bars, so that the bars' false-alarm rates can be estimated.

    python benchmarks/score_seeds.py --seeds 1 2 3 4 5 --json benchmarks/score_seeds.jsonl
    python benchmarks/score_seeds.py --summarize benchmarks/score_seeds.jsonl
"""

from __future__ import annotations

import math

import torch
from torch import nn

import ddpm
from seeds import main, mean_se, mmd2

T_GRID = [1, 2, 3, 5, 8, 12, 20, 30, 45, 60, 80, 100]


class ScoreNet(nn.Module):
    """Chapter 5's ε_θ for 2-D points: an MLP on [x_t, sin(w_k t), cos(w_k t)]."""

    def __init__(self, T, width=128, n_freqs=16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, -math.log(T), n_freqs)))
        self.net = nn.Sequential(nn.Linear(2 + 2 * n_freqs, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, t):
        angles = t[:, None].to(x.dtype) * self.freqs
        return self.net(torch.cat([x, angles.sin(), angles.cos()], dim=1))



def annealed_langevin(s, score, n, levels, n_steps, c=0.2, generator=None):
    x = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    for t_level in levels:
        delta = c * float(1 - s.alpha_bars[t_level])
        tt = torch.full((n,), t_level)
        for _ in range(n_steps):
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = x + delta / 2 * score(x, tt) + math.sqrt(delta) * z
    return x


def one_seed(seed: int, steps: int = 3000) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    T = 100
    s = ddpm.NoiseSchedule.linear(T=T, beta_1=1e-4 * 1000 / T, beta_T=0.02 * 1000 / T)
    mixture = ddpm.GaussianMixture.gaussians8(s)
    model = ScoreNet(T)
    train_x0 = ddpm.toy_2d("gaussians8", 50_000, gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        x0_batch = train_x0[torch.randint(0, len(train_x0), (256,), generator=gen)]
        loss = ddpm.l_simple(s, model, x0_batch, generator=gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
    model.eval()
    m, fit = 4000, ddpm.GaussianData(s, 0.0, 1.0)
    rel_err, rel_err_fit, angle = [], [], []
    with torch.no_grad():
        for t_eval in T_GRID:
            tt = torch.full((m,), t_eval)
            xt = ddpm.q_sample(s, mixture.sample(m, gen), t_eval, torch.randn(m, 2, generator=gen, dtype=torch.float64))
            scale = math.sqrt(1 - s.alpha_bars[t_eval])
            true = mixture.score(xt, tt)
            ours = -model(xt.float(), tt).double() / scale
            rel_err.append(((ours - true).norm(dim=1) / true.norm(dim=1)).median().item())
            rel_err_fit.append(((-fit(xt, tt) / scale - true).norm(dim=1) / true.norm(dim=1)).median().item())
            cos = nn.functional.cosine_similarity(ours, true).median().clamp(-1, 1)
            angle.append(math.degrees(math.acos(cos.item())))
    n_s, K = 1000, 20
    real = mixture.sample(n_s, gen)
    real_vs_real = max(mmd2(mixture.sample(n_s, gen), mixture.sample(n_s, gen)) for _ in range(K))
    samplers = {
        "algorithm 2": ddpm.sample(s, mixture, (n_s, 2), clip_denoised=False, generator=gen, dtype=torch.float64),
        "annealed langevin": annealed_langevin(s, mixture.score, n_s, range(T, 0, -1), n_steps=5, generator=gen),
        "gaussian fit": torch.randn(n_s, 2, generator=gen, dtype=torch.float64),
    }
    return {"seed": seed, "steps": steps, "t": T_GRID, "rel_err": rel_err, "rel_err_fit": rel_err_fit,
            "angle": angle, "mmd2_real_vs_real_max": real_vs_real,
            "mmd2": {name: mmd2(x, real) for name, x in samplers.items()}}


def summarize(rows: list[dict]) -> str:
    small = [i for i, t in enumerate(rows[0]["t"]) if t < 20]
    ratio = [max(r["rel_err"][i] / r["rel_err_fit"][i] for i in small) for r in rows]
    lines = [f"{len(rows)} seeds ({', '.join(str(r['seed']) for r in rows)}); mean ± standard error over seeds "
             "(smallest to largest)", "",
             f"- relative error of the score at t = 1: {mean_se([r['rel_err'][0] for r in rows], 3)}",
             f"- the Gaussian fit's at t = 1: {mean_se([r['rel_err_fit'][0] for r in rows], 3)}",
             f"- angle at t = 1 (degrees): {mean_se([r['angle'][0] for r in rows], 1)}",
             f"- largest angle over the grid (degrees; the chapter's bar is 30): "
             f"{mean_se([max(r['angle']) for r in rows], 1)}",
             f"- largest ratio of the network's relative error to the fit's, t < 20 (bar 0.7): {mean_se(ratio, 3)}"]
    for name in rows[0]["mmd2"]:
        lines.append(f"- MMD² of {name} over 5 x the largest real-vs-real (bar 1): "
                     f"{mean_se([r['mmd2'][name] / (5 * r['mmd2_real_vs_real_max']) for r in rows], 3)}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, steps=3000)
