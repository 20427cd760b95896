"""Chapter 7's checks of a trained digits model, over several seeds: how far each statistic sits from its bar.

For each seed, train the digits model with the package default (chapter 7's quick mode: 1500 steps of batch
128), draw 128 digits with Algorithm 2 from the EMA and from the raw weights (the same x_T and noise), and
compute what chapter 7 asserts on:
- the held-out L_simple of raw minus EMA, in its standard error (paired: same (t, eps) draws, K = 4 per image);
- the median distance to the nearest training digit, over the test digits' median, for the EMA samples, the
  raw samples and a Gaussian with the training digits' mean and covariance (359 draws); the bar is 1.5;
- the kernel distance (ddpm.digits_kid) of each set of 128 against the 359 held-out digits, in the features of
  the digits classifier; the paired difference Gaussian fit minus EMA (ddpm.kid_difference) in its standard
  error; and two halves of the held-out digits against each other (the floor), in its standard error.

Since 2026-12-05 the network samples in bf16 where it trained in bf16, as the chapter does; rows written
before that date sampled in float32 (what that changes: sampling_bf16_trained.py, SAMPLING_BF16.md).

    python benchmarks/training_seeds.py --seeds 0 1 2 3 4 5 --json benchmarks/training_seeds.jsonl
    python benchmarks/training_seeds.py --summarize benchmarks/training_seeds.jsonl
"""

from __future__ import annotations

import math
import tempfile

import torch

import ddpm
from ddpm.train import train
from seeds import main, mean_se


def nn_median(x: torch.Tensor, train_x: torch.Tensor) -> float:
    d = torch.cdist(x.flatten(1).double(), train_x.flatten(1).double())
    return (d.min(1).values / math.sqrt(x[0].numel())).median().item()


def one_seed(seed: int, n: int = 128) -> dict:
    s = ddpm.NoiseSchedule.linear(T=1000, beta_1=1e-4, beta_T=0.02)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(ddpm.TrainConfig(data="digits", seed=seed, out_dir=tmp, sample_every=0), progress=False)
    nets = {"EMA": result.ema.eval(), "raw": result.model.eval()}
    gen = torch.Generator().manual_seed(seed)
    train_x, test_x = ddpm.digits("train"), ddpm.digits("test")

    # held-out L_simple, paired
    K = 4
    x0 = test_x.repeat(K, 1, 1, 1)
    t = torch.randint(1, s.T + 1, (len(x0),), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    xt = ddpm.q_sample(s, x0, t, eps)
    with torch.no_grad():
        loss = {k: (net(xt, t) - eps).pow(2).flatten(1).mean(1).reshape(K, -1).mean(0).double()
                for k, net in nets.items()}
    gain = loss["raw"] - loss["EMA"]

    samples = {k: ddpm.sample(s, net, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed),
                              bf16=result.config.bf16)
               for k, net in nets.items()}
    flat = train_x.flatten(1).double()
    z = torch.randn(len(test_x), len(flat), generator=gen, dtype=torch.float64)
    gaussian = (flat.mean(0) + z @ (flat - flat.mean(0)) / math.sqrt(len(flat) - 1)
                ).clamp(-1, 1).float().reshape(-1, 1, 8, 8)
    reference = nn_median(test_x, train_x)
    nn_ratio = {k: nn_median(x, train_x) / reference for k, x in {**samples, "Gaussian fit": gaussian}.items()}

    classifier = ddpm.train_digits_classifier(seed=seed)
    real = ddpm.digit_features(classifier, test_x)
    features = {k: ddpm.digit_features(classifier, x) for k, x in {**samples, "Gaussian fit": gaussian[:n]}.items()}
    kid = {k: tuple(ddpm.kid(f, real)) for k, f in features.items()}
    half = torch.randperm(len(test_x), generator=gen)
    floor = ddpm.kid(real[half[: len(test_x) // 2]], real[half[len(test_x) // 2:]])
    gauss_minus_ema = ddpm.kid_difference(features["Gaussian fit"], features["EMA"], real)
    raw_minus_ema = ddpm.kid_difference(features["raw"], features["EMA"], real)
    return {"seed": seed, "steps": result.step, "n": n,
            "ema_gain_z": (gain.mean() / (gain.std() / math.sqrt(len(gain)))).item(),
            "nn_ratio": nn_ratio, "kid": kid, "real_vs_real": tuple(floor),
            "gaussian_minus_ema": tuple(gauss_minus_ema), "raw_minus_ema": tuple(raw_minus_ema)}


def summarize(rows: list[dict]) -> str:
    lines = [f"{len(rows)} seeds ({', '.join(str(r['seed']) for r in rows)}); mean ± standard error over seeds "
             "(smallest to largest)", "",
             f"- held-out L_simple, raw minus EMA, in its SE: {mean_se([r['ema_gain_z'] for r in rows], 1)}"]
    for k in rows[0]["nn_ratio"]:
        lines.append(f"- nearest-neighbour median over the test digits', {k}: "
                     f"{mean_se([r['nn_ratio'][k] for r in rows], 3)}")
    for k in rows[0]["kid"]:
        lines.append(f"- KID against the held-out digits, {k}: {mean_se([r['kid'][k][0] for r in rows], 1)}; "
                     f"its SE {mean_se([r['kid'][k][1] for r in rows], 1)}")
    for key, label in (("gaussian_minus_ema", "Gaussian fit minus EMA"), ("raw_minus_ema", "raw minus EMA"),
                       ("real_vs_real", "real vs real (two halves)")):
        lines.append(f"- KID, {label}: {mean_se([r[key][0] for r in rows], 1)}; in its SE "
                     f"{mean_se([r[key][0] / r[key][1] for r in rows], 2)}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, n=128)
