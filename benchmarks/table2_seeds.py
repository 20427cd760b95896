"""Chapter 8's miniature Table 2 over several seeds: how much of what one run shows is the seed.

For each seed, train the four cells {ε, μ̃} × {L_simple (unweighted MSE), true bound} exactly as the
chapter does in quick mode, then score them as the chapter does: paired bits/dim on the same held-out
images and x_t draws; samples (σ² = β, the same noise for all four) by the kernel distance (KID) of n_kid of
them against all 359 held-out digits, with the paired differences from (eps, simple), and by the digits
Fréchet distance of the first n_fd of them next to real-vs-real. Prints one JSON line per seed; the
chapter's prose quotes the spread across seeds.

Since 2026-12-05 the network samples in bf16 where it trained in bf16, as the chapter does; rows written
before that date sampled in float32 (what that changes: sampling_bf16_trained.py, SAMPLING_BF16.md).

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


def one_seed(seed: int, steps: int, batch: int, n_bpd: int, n_fd: int, n_kid: int) -> dict:
    s = ddpm.NoiseSchedule.linear(T=1000, beta_1=1e-4, beta_T=0.02)
    models, bf16, tick = {}, {}, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, (param, loss) in CELLS.items():
            config = ddpm.TrainConfig(data="digits", loss=loss, parameterization=param, steps=steps,
                                      batch_size=batch, lr=2e-4, seed=seed, out_dir=f"{tmp}/{param}-{loss}",
                                      sample_every=0, checkpoint_every=steps)
            run = train(config, progress=False)
            models[name], bf16[name] = ddpm.as_eps_model(s, run.ema.eval(), param), run.config.bf16
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
    fd, features, tick = {}, {}, time.perf_counter()
    for name, m in models.items():
        x = ddpm.sample(s, m, (n_kid, 1, 8, 8), generator=torch.Generator().manual_seed(seed), bf16=bf16[name])
        fd[name] = ddpm.digits_frechet_distance(x[:n_fd], real, classifier)
        features[name] = ddpm.digit_features(classifier, x)
    sample_s = time.perf_counter() - tick
    all_real = ddpm.digit_features(classifier, test)
    halves = all_real[order[: len(test) // 2]], all_real[order[len(test) // 2:]]
    best = "eps, simple"
    kid = {k: tuple(ddpm.kid(f, all_real)) for k, f in features.items()}
    kid_minus_simple = {k: tuple(ddpm.kid_difference(f, features[best], all_real))
                        for k, f in features.items() if k != best}
    ref = "eps, bound"
    return {"seed": seed, "steps": steps, "batch": batch, "n_bpd": n_bpd, "n_fd": n_fd,
            "bpd": {k: v.total.mean for k, v in paired.models.items()},
            "bpd_se": {k: v.total.se for k, v in paired.models.items()},
            "diff_vs_eps_bound": {k: tuple(paired.difference(k, ref)) for k in models if k != ref},
            "fd": fd, "real_vs_real": scale.real_vs_real, "noise": scale.real_vs_gaussian_noise,
            "n_kid": n_kid, "kid": kid, "kid_minus_eps_simple": kid_minus_simple,
            "kid_real_vs_real": tuple(ddpm.kid(*halves)),
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
    scored = [r for r in rows if "kid" in r]  # the rows of runs since the kernel distance was added
    if scored:
        rows = scored
        lines += ["", f"KID of {rows[0]['n_kid']} samples against the 359 held-out digits, over the "
                  f"{len(rows)} seeds that measured it ({', '.join(str(r['seed']) for r in rows)}); its paired "
                  "difference from (eps, simple), also in its own standard errors:", ""]
        for name in CELLS:
            line = f"- {name}: {mean_se([r['kid'][name][0] for r in rows], 0)}"
            if name != "eps, simple":
                d = [r["kid_minus_eps_simple"][name] for r in rows]
                line += f"; minus (eps, simple) {mean_se([v[0] for v in d], 0)}, {mean_se([v[0] / v[1] for v in d], 1)} SE"
            lines.append(line)
        floor = [r["kid_real_vs_real"] for r in rows]
        lines.append(f"- real vs real (two halves): {mean_se([v[0] for v in floor], 0)}; "
                     f"{mean_se([v[0] / v[1] for v in floor], 2)} SE")
    return "\n".join(lines)


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, steps=500, batch=64, n_bpd=32, n_fd=64, n_kid=64)
