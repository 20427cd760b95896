"""What sampling in bf16 changes for a trained digits model: the book's chapters 7, 8, 10 and 12 run the
network in bf16 while sampling wherever it trained in bf16 (a CPU or GPU that computes bf16 natively).

For each seed: train the package's digits recipe (``python -m ddpm train --data digits``: the chapters'
model), then draw n samples with Algorithm 2 over all 1000 steps twice, in float32 and with the network in
bf16, from the same x_T and the same noise at every step; and score both sets with chapter 7's digits
classifier (same seed) against the 359 held-out digits. Recorded: the largest and the mean difference per
pixel between the paired samples (in 255ths, the width of one of the 256 levels being 1), the share of
samples whose classifier label differs, the KID of each set, and their paired difference bf16 − float32 in
its own standard errors; the time per sampling step of each.

    python benchmarks/sampling_bf16_trained.py --seeds 0 1 2 --json benchmarks/sampling_bf16_trained.jsonl
    python benchmarks/sampling_bf16_trained.py --summarize benchmarks/sampling_bf16_trained.jsonl

``--train-steps N`` (0: the recipe's 1500) is for a smoke test of this script.
"""

from __future__ import annotations

import tempfile
import time

import torch

import ddpm
from ddpm.train import train
from seeds import main, mean_se


def one_seed(seed: int, n: int, train_steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = ddpm.TrainConfig(data="digits", seed=seed, out_dir=tmp, sample_every=0, steps=train_steps or None)
        result = train(config, progress=False)
    model, used = result.ema.eval(), result.config
    s = ddpm.NoiseSchedule.linear(used.T, used.beta_1, used.beta_T)
    samples, seconds = {}, {}
    for bf16 in (False, True):
        tick = time.perf_counter()
        samples[bf16] = ddpm.sample(s, model, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed + 1),
                                    bf16=bf16)
        seconds[bf16] = (time.perf_counter() - tick) / used.T
    classifier = ddpm.train_digits_classifier(seed=seed)
    real = ddpm.digit_features(classifier, ddpm.digits("test"))
    features = {b: ddpm.digit_features(classifier, x) for b, x in samples.items()}
    with torch.no_grad():
        labels = {b: classifier(x).argmax(1) for b, x in samples.items()}
    diff = (samples[True] - samples[False]).abs() * 127.5
    kid = {b: ddpm.kid(f, real) for b, f in features.items()}
    d = ddpm.kid_difference(features[True], features[False], real)
    return {"seed": seed, "n": n, "train_steps": result.step, "trained_bf16": used.bf16, "max_diff_255": diff.max().item(),
            "mean_diff_255": diff.mean().item(), "label_changed": (labels[True] != labels[False]).double().mean().item(),
            "kid_float32": [kid[False].mean, kid[False].se], "kid_bf16": [kid[True].mean, kid[True].se],
            "kid_bf16_minus_float32": [d.mean, d.se], "z": d.mean / d.se if d.se > 0 else 0.0,
            "ms_per_step": {"float32": 1000 * seconds[False], "bf16": 1000 * seconds[True]}}


def summarize(rows: list[dict]) -> str:
    col = lambda key, i=None: [r[key] if i is None else r[key][i] for r in rows]
    return "\n".join([
        f"{len(rows)} seeds ({', '.join(str(r['seed']) for r in rows)}), {rows[0]['n']} samples each, Algorithm 2 "
        "over 1000 steps from the same x_T and noise; mean ± standard error over seeds (smallest to largest)", "",
        f"- largest difference per pixel, in 255ths: {mean_se(col('max_diff_255'))}",
        f"- mean difference per pixel, in 255ths: {mean_se(col('mean_diff_255'), 3)}",
        f"- share of samples whose classifier label changed: {mean_se(col('label_changed'), 3)}",
        f"- KID float32: {mean_se(col('kid_float32', 0), 0)}; bf16: {mean_se(col('kid_bf16', 0), 0)}",
        f"- paired KID bf16 − float32: {mean_se(col('kid_bf16_minus_float32', 0), 0)}, in its SE: "
        f"{mean_se(col('z'), 1)}",
        f"- ms per step: float32 {mean_se([r['ms_per_step']['float32'] for r in rows], 1)}, "
        f"bf16 {mean_se([r['ms_per_step']['bf16'] for r in rows], 1)}"])


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, n=128, train_steps=0)
