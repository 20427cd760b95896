"""Chapter 12's guidance sweep over several seeds: what classifier-free guidance buys and costs on digits.

For each seed, train the class-conditional digits model exactly as the chapter's quick mode does (chapter
7's recipe with labels, 10% of them dropped to the null class, for train_steps steps: 1000, where chapter 7
trains 1500) and the digits classifier with the same seed; then draw n_per samples of each class with DDIM
(eta = 0, ddim_steps steps; the network in bf16 where it trained in bf16, as the chapter samples) from one
shared x_T for every guidance weight w, and score them as the chapter does:

- accuracy: the share of samples the classifier puts in the requested class, with its binomial SE, and
  the paired difference from w = 0 (the same x_T), with the SE of the per-sample differences;
- confidence: the classifier's mean probability of the requested class;
- diversity within a class: KID of each class's samples against that class's held-out digits, averaged
  over the 10 classes (SE: root of the summed squared SEs over 10), and the paired difference from w = 0
  (ddpm.kid_difference per class, averaged the same way).

    python benchmarks/guidance_seeds.py --seeds 0 1 2 3 4 5 6 7 --json benchmarks/guidance_seeds.jsonl
    python benchmarks/guidance_seeds.py --summarize benchmarks/guidance_seeds.jsonl

``--train-steps 0`` trains the package default (1500 steps), the chapter's length before 2026-12-05.
"""

from __future__ import annotations

import math
import tempfile
import time

import torch

import ddpm
from ddpm.levels import to_model_range, to_uint8
from ddpm.train import train
from seeds import main, mean_se

WEIGHTS = (0.0, 1.0, 2.0, 4.0)


def class_probability(classifier, x, y):
    """The classifier's probability of class y[i] for image i, rounded to the 256 levels first."""
    with torch.no_grad():
        p = torch.softmax(classifier(to_model_range(to_uint8(x))).double(), 1)
    return p.gather(1, y[:, None])[:, 0]


def one_seed(seed: int, n_per: int = 32, ddim_steps: int = 50, train_steps: int = 0) -> dict:
    tick = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = ddpm.TrainConfig(data="digits", class_conditional=True, seed=seed, out_dir=tmp,
                                  sample_every=0, steps=train_steps or None)
        result = train(config, progress=False)
    train_s = time.perf_counter() - tick
    model, used = result.ema.eval(), result.config
    s = ddpm.NoiseSchedule.linear(used.T, used.beta_1, used.beta_T)
    classifier = ddpm.train_digits_classifier(seed=seed)
    test, labels = ddpm.digits("test", return_labels=True)
    real = ddpm.digit_features(classifier, test)

    g = torch.Generator().manual_seed(seed + 12)
    y = torch.arange(10).repeat_interleave(n_per)
    x_T = torch.randn(len(y), 1, 8, 8, generator=g)
    tick = time.perf_counter()
    samples = {w: ddpm.ddim_sample(s, ddpm.classifier_free_guidance(model, y, w), x_T.shape, ddim_steps,
                                   x_T=x_T, bf16=used.bf16) for w in WEIGHTS}
    sample_s = time.perf_counter() - tick
    with torch.no_grad():
        hit = {w: (classifier(to_model_range(to_uint8(x))).argmax(1) == y).double() for w, x in samples.items()}
    conf = {w: class_probability(classifier, x, y) for w, x in samples.items()}
    feats = {w: ddpm.digit_features(classifier, x) for w, x in samples.items()}
    per_class = lambda f: [ddpm.kid(f[y == c], real[labels == c]) for c in range(10)]
    average = lambda ests: (sum(e.mean for e in ests) / 10, math.sqrt(sum(e.se ** 2 for e in ests)) / 10)
    kid = {w: average(per_class(f)) for w, f in feats.items()}
    kid_diff = {w: average([ddpm.kid_difference(feats[w][y == c], feats[0.0][y == c], real[labels == c])
                            for c in range(10)]) for w in WEIGHTS if w}
    se = lambda v: (v.std() / math.sqrt(len(v))).item()
    real_hit = (classifier(to_model_range(to_uint8(test))).argmax(1) == labels).double()
    return {"seed": seed, "steps": result.step, "bf16": used.bf16, "n_per": n_per, "ddim_steps": ddim_steps,
            "train_s": train_s, "sample_s": sample_s, "classifier_accuracy": real_hit.mean().item(),
            "real_confidence": class_probability(classifier, test, labels).mean().item(),
            "accuracy": {str(w): (h.mean().item(), se(h)) for w, h in hit.items()},
            "accuracy_minus_w0": {str(w): ((hit[w] - hit[0.0]).mean().item(), se(hit[w] - hit[0.0]))
                                  for w in WEIGHTS if w},
            "confidence": {str(w): (c.mean().item(), se(c)) for w, c in conf.items()},
            "confidence_minus_w0": {str(w): ((conf[w] - conf[0.0]).mean().item(), se(conf[w] - conf[0.0]))
                                    for w in WEIGHTS if w},
            "kid_per_class": {str(w): k for w, k in kid.items()},
            "kid_per_class_minus_w0": {str(w): d for w, d in kid_diff.items()}}


def summarize(rows: list[dict]) -> str:
    z = lambda p: p[0] / p[1] if p[1] > 0 else math.inf
    r0 = rows[0]
    lines = [f"{len(rows)} seeds ({', '.join(str(r['seed']) for r in rows)}); {r0['n_per']} samples per class, "
             f"DDIM {r0['ddim_steps']} steps (eta = 0), one x_T for every w; mean ± standard error over seeds "
             "(smallest to largest)", "",
             f"classifier on the held-out digits: accuracy {mean_se([r['classifier_accuracy'] for r in rows], 3)}, "
             f"confidence {mean_se([r['real_confidence'] for r in rows], 3)}",
             f"training {mean_se([r['train_s'] / 60 for r in rows], 1)} min, sampling all w "
             f"{mean_se([r['sample_s'] / 60 for r in rows], 1)} min (one thread)", "",
             "| w | accuracy | minus w = 0 (paired SE) | confidence | minus w = 0 (paired SE) "
             "| per-class KID | minus w = 0 (paired SE) |", "|---|---|---|---|---|---|---|"]
    def cells(key: str, w: str, digits: int) -> str:
        """The measure's mean over seeds, then its paired difference from w = 0 (blank at w = 0)."""
        cell = f"| {mean_se([r[key][w][0] for r in rows], digits)} "
        if w not in r0[key + "_minus_w0"]:
            return cell + "| "
        d = [r[key + "_minus_w0"][w] for r in rows]
        return cell + f"| {mean_se([p[0] for p in d], digits)} ({mean_se([z(p) for p in d], 1)} SE) "

    for w in r0["accuracy"]:
        row = f"| {w} " + cells("accuracy", w, 3) + cells("confidence", w, 3) + cells("kid_per_class", w, 0) + "|"
        lines.append(row)
    lines += ["", "within-seed SEs (median over seeds): "
              + ", ".join(f"w = {w}: accuracy {torch.tensor([r['accuracy'][w][1] for r in rows]).median():.3f}, "
                          f"KID {torch.tensor([r['kid_per_class'][w][1] for r in rows]).median():.0f}"
                          for w in r0["accuracy"])]
    return "\n".join(lines)


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, n_per=32, ddim_steps=50, train_steps=1000)
