"""Chapter 9's miniature Table 2 over several seeds: how much of what one run shows is the seed.

For each seed, train the four cells {ε, μ̃} × {L_simple (unweighted MSE), true bound} exactly as the
chapter does in quick mode, then score them as the chapter does: paired bits/dim on the same held-out
images and x_t draws, and the digits Fréchet distance of samples (σ² = β) next to real-vs-real.
Prints one JSON line per seed; the chapter's prose quotes the spread across seeds.

    python benchmarks/table2_seeds.py --seeds 0 1 2 3 4 --json table2_seeds.jsonl
    python benchmarks/table2_seeds.py --summarize table2_seeds.jsonl   # the table of TABLE2.md
"""

from __future__ import annotations

import tempfile
import time

import torch

import ddpm
from ddpm.train import train
from seeds import main, mean_se

CELLS = {"eps, simple": ("eps", "simple"), "eps, bound": ("eps", "vlb"),
         "mu, simple": ("mu", "simple"), "mu, bound": ("mu", "vlb")}


def one_seed(seed: int, steps: int, batch: int, n_bpd: int, n_fd: int) -> dict:
    s = ddpm.NoiseSchedule.linear(T=1000, beta_1=1e-4, beta_T=0.02)
    models, tick = {}, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, (param, loss) in CELLS.items():
            config = ddpm.TrainConfig(data="digits", loss=loss, parameterization=param, steps=steps,
                                      batch_size=batch, lr=2e-4, seed=seed, out_dir=f"{tmp}/{param}-{loss}",
                                      sample_every=0, checkpoint_every=steps)
            models[name] = ddpm.as_eps_model(s, train(config, progress=False).ema.eval(), param)
    train_s = time.perf_counter() - tick
    test = ddpm.digits("test")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(test), generator=gen)
    tick = time.perf_counter()
    paired = ddpm.paired_bits_per_dim(s, models, test[order[:n_bpd]], batch_size=512, seed=seed)
    bpd_s = time.perf_counter() - tick
    classifier = ddpm.train_digits_classifier(seed=seed)
    scale = ddpm.frechet_reference_scale(classifier, seed=seed, reference=test[order[:2 * n_fd]])
    real = test[order[-n_fd:]]
    fd, tick = {}, time.perf_counter()
    for name, m in models.items():
        x = ddpm.sample(s, m, (n_fd, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
        fd[name] = ddpm.digits_frechet_distance(x, real, classifier)
    sample_s = time.perf_counter() - tick
    ref = "eps, bound"
    return {"seed": seed, "steps": steps, "batch": batch, "n_bpd": n_bpd, "n_fd": n_fd,
            "bpd": {k: v.total.mean for k, v in paired.models.items()},
            "bpd_se": {k: v.total.se for k, v in paired.models.items()},
            "diff_vs_eps_bound": {k: tuple(paired.difference(k, ref)) for k in models if k != ref},
            "fd": fd, "real_vs_real": scale.real_vs_real, "noise": scale.real_vs_gaussian_noise,
            "seconds": {"train": train_s, "bpd": bpd_s, "sample": sample_s}}


def summarize(rows: list[dict]) -> str:
    """Mean ± standard error over seeds of each cell's bits/dim, paired difference and Fréchet distance."""
    lines = [f"{len(rows)} seeds ({', '.join(str(r['seed']) for r in rows)}); mean ± standard error over "
             "seeds (smallest to largest)", "",
             "| cell | bits/dim | minus (eps, bound), paired | Fréchet distance |", "|---|---|---|---|"]
    for name in CELLS:
        diff = "—" if name == "eps, bound" else mean_se([r["diff_vs_eps_bound"][name][0] for r in rows])
        lines.append(f"| {name} | {mean_se([r['bpd'][name] for r in rows])} | {diff} | "
                     f"{mean_se([r['fd'][name] for r in rows])} |")
    lines.append(f"| real vs real | | | {mean_se([r['real_vs_real'] for r in rows])} |")
    lines.append(f"| real vs Gaussian noise | | | {mean_se([r['noise'] for r in rows])} |")
    z = [r["diff_vs_eps_bound"]["eps, simple"][0] / r["diff_vs_eps_bound"]["eps, simple"][1] for r in rows]
    lines += ["", "eps, simple minus eps, bound in each seed's own paired standard errors: "
              + ", ".join(f"{v:+.1f}" for v in z)]
    return "\n".join(lines)


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, steps=500, batch=64, n_bpd=32, n_fd=64)
