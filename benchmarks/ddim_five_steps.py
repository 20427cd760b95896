"""Chapter 10's "5 DDIM steps are worse than 200" on the weakest model seen: how the paired KID difference's
z (difference over its standard error) varies between draws of x_T, at 128 and at 512 draws.

The model is chapter 7's recipe with seed 1957976216, the seed of the test run that failed the check when it
used the table's 128 samples. Draws 0-2: 128 x_T from Generator(seed + k); draws 10-15: 512 x_T from
Generator(seed + k), scored whole and by their first 128. One JSON line per draw.

Since 2026-12-05 the network samples in bf16 where it trained in bf16, as the chapter does; rows written
before that date sampled in float32 (what that changes: sampling_bf16_trained.py, SAMPLING_BF16.md).

    python benchmarks/ddim_five_steps.py --json benchmarks/ddim_five_steps.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

import ddpm
from ddpm.train import train

SEED = 1957976216


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="append one line per draw to this file")
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        config = ddpm.TrainConfig(data="digits", steps=1500, sample_every=375, num_samples=4, seed=SEED,
                                  out_dir=tmp)
        result = train(config, progress=False)
    model, bf16 = result.ema.eval(), result.config.bf16
    s = ddpm.NoiseSchedule.linear(1000, 1e-4, 0.02)
    classifier = ddpm.train_digits_classifier(seed=SEED)
    real = ddpm.digit_features(classifier, ddpm.digits("test"))
    z = lambda d: d.mean / d.se
    for k, n in [(0, 128), (1, 128), (2, 128)] + [(10 + i, 512) for i in range(6)]:
        x_T = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(SEED + k))
        few, many = (ddpm.digit_features(classifier, ddpm.ddim_sample(s, model, x_T.shape, steps, eta=0.0,
                                                                       x_T=x_T, bf16=bf16)) for steps in (5, 200))
        row = {"seed": SEED, "draw": k, "n": n, "z": z(ddpm.kid_difference(few, many, real))}
        if n > 128:
            row["z_first_128"] = z(ddpm.kid_difference(few[:128], many[:128], real))
        print(json.dumps(row), flush=True)
        if a.json:
            with open(a.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
