"""Chapter 10's kernel distance (KID) against the number of DDIM steps, over several seeds.

For each seed, train the digits model with chapter 7's recipe (the package default: 1500 steps of batch 128),
draw 128 digits from one x_T with DDIM (eta = 0) at 5, 10, 20, 50 and 200 steps and with Algorithm 2 (the
same x_T), and score each set with ddpm.kid against the 359 held-out digits in the features of chapter 7's
digits classifier; also two halves of the held-out digits against each other (the floor) and uniform
noise (the ceiling); and each sampler's paired difference from DDIM with 200 steps (ddpm.kid_difference).
Exactly the chapter's computation in quick mode.

Since 2026-12-05 the network samples in bf16 where it trained in bf16, as the chapter does; rows written
before that date sampled in float32 (what that changes: sampling_bf16_trained.py, SAMPLING_BF16.md).

    python benchmarks/ddim_seeds.py --seeds 0 1 2 3 4 --json benchmarks/ddim_seeds.jsonl
    python benchmarks/ddim_seeds.py --summarize benchmarks/ddim_seeds.jsonl
"""

from __future__ import annotations

import tempfile

import torch

import ddpm
from ddpm.train import train
from seeds import main, mean_se

N_STEPS = (5, 10, 20, 50, 200)


def one_seed(seed: int, n: int = 128) -> dict:
    s = ddpm.NoiseSchedule.linear(T=1000, beta_1=1e-4, beta_T=0.02)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(ddpm.TrainConfig(data="digits", seed=seed, out_dir=tmp, sample_every=0), progress=False)
    model = result.ema.eval()
    test = ddpm.digits("test")
    classifier = ddpm.train_digits_classifier(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    real = ddpm.digit_features(classifier, test)
    half = torch.randperm(len(test), generator=gen)
    floor = ddpm.kid(real[half[: len(test) // 2]], real[half[len(test) // 2:]])
    x_T = torch.randn(n, 1, 8, 8, generator=gen)
    bf16 = result.config.bf16
    samples = {str(k): ddpm.ddim_sample(s, model, x_T.shape, k, eta=0.0, x_T=x_T, bf16=bf16) for k in N_STEPS}
    samples["algorithm 2"] = ddpm.sample(s, model, x_T.shape, generator=gen, x_T=x_T, bf16=bf16)
    samples["uniform noise"] = torch.rand(x_T.shape, generator=gen) * 2 - 1
    features = {k: ddpm.digit_features(classifier, x) for k, x in samples.items()}
    kid = {k: tuple(ddpm.kid(f, real)) for k, f in features.items()}
    minus_200 = {k: tuple(ddpm.kid_difference(f, features["200"], real)) for k, f in features.items()
                 if k not in ("200", "uniform noise")}
    return {"seed": seed, "steps": result.step, "batch_size": result.config.batch_size, "bf16": result.config.bf16,
            "n": n, "kid": kid, "minus_200": minus_200, "real_vs_real": tuple(floor)}


def summarize(rows: list[dict]) -> str:
    lines = [f"{len(rows)} seeds ({', '.join(str(r['seed']) for r in rows)}); KID, mean ± standard error "
             "over seeds (smallest to largest), and the median of the per-seed standard errors",
             "", "| sampler | KID | its SE within a seed |", "|---|---|---|"]
    for key in [*rows[0]["kid"], "real vs real"]:
        pairs = [r["real_vs_real"] if key == "real vs real" else r["kid"][key] for r in rows]
        label = f"DDIM, eta = 0, {key} steps" if key[0].isdigit() else key
        se = torch.tensor([p[1] for p in pairs]).median().item()
        lines.append(f"| {label} | {mean_se([p[0] for p in pairs], 0)} | {se:.0f} |")
    lines += ["", "Within each seed, the paired difference from DDIM with 200 steps (ddpm.kid_difference: the same "
              "x_T), and the same in its standard errors:", ""]
    for key in rows[0]["minus_200"]:
        pairs = [r["minus_200"][key] for r in rows]
        lines.append(f"- {key}: {mean_se([p[0] for p in pairs], 0)}; "
                     f"{mean_se([p[0] / p[1] for p in pairs], 1)} SE")
    z_noise = [(r["kid"]["uniform noise"][0] - r["kid"]["200"][0])
               / (r["kid"]["uniform noise"][1] ** 2 + r["kid"]["200"][1] ** 2) ** 0.5 for r in rows]
    z_floor = [r["real_vs_real"][0] / r["real_vs_real"][1] for r in rows]
    lines += ["", f"uniform noise above DDIM with 200 steps, in combined SE: {mean_se(z_noise, 1)}",
              f"real vs real, in its SE: {mean_se(z_floor, 2)}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, n=128)
