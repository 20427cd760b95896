"""Chapter 10's interpolation section (the paper's §4.4, Figs. 8-9) over several seeds.

For each seed, train the digits model with chapter 7's recipe (the package default: 1500 steps of batch 128)
and the digits classifier with the same seed, then do exactly what the chapter's quick mode does:

- Fig. 8: 16 pairs of held-out digits of different classes, encoded at t = 250 with q(x_t | x_0) and one
  shared noise, their latents mixed at lambda = 0, 0.25, ..., 1 and decoded with Algorithm 2 from t = 250
  with the same noise for every lambda; the midpoints (lambda = 0.5) against the pixel-space midpoints by
  the RMS distance to the nearest training digit and by the classifier's confidence, paired over pairs.
- Fig. 9: one held-out digit of each class, x_t from q at t = 100, 250, 500, 750, 1000, each decoded
  twice with Algorithm 2 from t; the fraction of decodings the classifier labels with the source's class
  (chance: 0.1), mean and standard error over the 10 sources, and the paired difference t = 100 minus
  t = 1000.

Since 2026-12-05 the network samples in bf16 where it trained in bf16, as the chapter does; rows written
before that date sampled in float32 (what that changes: sampling_bf16_trained.py, SAMPLING_BF16.md).

    python benchmarks/interpolation_seeds.py --seeds 0 1 2 3 4 --json benchmarks/interpolation_seeds.jsonl
    python benchmarks/interpolation_seeds.py --summarize benchmarks/interpolation_seeds.jsonl

``--train-steps`` (0: the package default) is only for a smoke test of this script.
"""

from __future__ import annotations

import math
import tempfile

import torch

import ddpm
from ddpm.train import train
from seeds import main, mean_se

LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)
SURVIVE_T = (100, 250, 500, 750, 1000)


def nn_distance(x, train_x):
    """Root-mean-square pixel distance from each image to its nearest training digit (chapter 7)."""
    d = torch.cdist(x.flatten(1).double(), train_x.flatten(1).double())
    return d.min(1).values / math.sqrt(x[0].numel())


def confidence(classifier, x):
    with torch.no_grad():
        return torch.softmax(classifier(x), 1).max(1).values.double()


def paired(d) -> tuple[float, float]:
    d = torch.as_tensor(d, dtype=torch.float64)
    return d.mean().item(), (d.std() / math.sqrt(len(d))).item()


def one_seed(seed: int, n_pairs: int = 16, t_mix: int = 250, k: int = 2, train_steps: int = 0) -> dict:
    s = ddpm.NoiseSchedule.linear(T=1000, beta_1=1e-4, beta_T=0.02)
    with tempfile.TemporaryDirectory() as tmp:
        config = ddpm.TrainConfig(data="digits", seed=seed, out_dir=tmp, sample_every=0,
                                  steps=train_steps or None)
        result = train(config, progress=False)
    model = result.ema.eval()
    classifier = ddpm.train_digits_classifier(seed=seed)
    test, labels = ddpm.digits("test", return_labels=True)
    train_x = ddpm.digits("train")

    # Fig. 8: the chapter's cell, with its generator
    g = torch.Generator().manual_seed(seed + 8)
    order = torch.randperm(len(test), generator=g).tolist()
    pairs = []
    while len(pairs) < n_pairs:
        i = order.pop(0)
        j = next(j for j in order if labels[j] != labels[i])
        order.remove(j)
        pairs.append((i, j))
    a, b = test[[i for i, _ in pairs]], test[[j for _, j in pairs]]
    eps = torch.randn(a.shape, generator=g)
    xt_a, xt_b = ddpm.q_sample(s, a, t_mix, eps), ddpm.q_sample(s, b, t_mix, eps)
    decoded, pixel = {}, {}
    for lam in LAMBDAS:
        mix = (1 - lam) * xt_a + lam * xt_b
        decoded[lam] = ddpm.sample(s, model, None, x_T=mix, start_t=t_mix, bf16=result.config.bf16,
                                   generator=torch.Generator().manual_seed(seed + 80))
        pixel[lam] = (1 - lam) * a + lam * b
    rms = lambda x: x.pow(2).flatten(1).mean(1).sqrt().mean().item()
    mid_independent = 0.5 * xt_a + 0.5 * ddpm.q_sample(s, b, t_mix, torch.randn(b.shape, generator=g))
    nn_pix, nn_dec = nn_distance(pixel[0.5], train_x), nn_distance(decoded[0.5], train_x)
    conf_pix, conf_dec = confidence(classifier, pixel[0.5]), confidence(classifier, decoded[0.5])
    nn_src = nn_distance(torch.cat([a, b]), train_x)
    conf_src = confidence(classifier, torch.cat([a, b]))

    # Fig. 9: the chapter's cell, with its generator
    g = torch.Generator().manual_seed(seed + 9)
    order = torch.randperm(len(test), generator=g).tolist()
    src = [next(i for i in order if labels[i] == c) for c in range(10)]
    x0, y0 = test[src], labels[src]
    start = {t: ddpm.q_sample(s, x0, t, torch.randn(x0.shape, generator=g)).repeat_interleave(k, 0)
             for t in SURVIVE_T}
    x, order_t = None, []
    with torch.no_grad():
        for u in range(max(start), 0, -1):
            if u in start:
                x = start[u] if x is None else torch.cat([x, start[u]])
                order_t.append(u)
            x, _ = ddpm.p_sample(s, model, x, u, torch.randn(x.shape, generator=g), bf16=result.config.bf16)
    endings = dict(zip(order_t, x.split([len(start[u]) for u in order_t])))
    with torch.no_grad():
        kept = {t: (classifier(endings[t]).argmax(1) == y0.repeat_interleave(k)).double()
                .reshape(len(src), k).mean(1) for t in SURVIVE_T}
    return {"seed": seed, "steps": result.step, "bf16": result.config.bf16, "n_pairs": n_pairs,
            "t_mix": t_mix, "k": k, "classifier_accuracy": classifier.test_accuracy,
            "rms": {"x_t": 0.5 * (rms(xt_a) + rms(xt_b)), "mix_shared": rms(0.5 * (xt_a + xt_b)),
                    "mix_independent": rms(mid_independent)},
            "nn": {"sources": nn_src.mean().item(), "pixel": nn_pix.mean().item(),
                   "decoded": nn_dec.mean().item()},
            "nn_pixel_minus_decoded": paired(nn_pix - nn_dec),
            "confidence": {"sources": conf_src.mean().item(), "pixel": conf_pix.mean().item(),
                           "decoded": conf_dec.mean().item()},
            "confidence_decoded_minus_pixel": paired(conf_dec - conf_pix),
            "survival": {str(t): paired(v) for t, v in kept.items()},
            "survival_100_minus_1000": paired(kept[100] - kept[1000])}


def summarize(rows: list[dict]) -> str:
    z = lambda p: p[0] / p[1] if p[1] > 0 else math.inf
    lines = [f"{len(rows)} seeds ({', '.join(str(r['seed']) for r in rows)}); mean ± standard error over seeds "
             "(smallest to largest)", "",
             f"Fig. 8 (t = {rows[0]['t_mix']}, {rows[0]['n_pairs']} pairs), RMS per pixel of the latents:",
             f"- x_t: {mean_se([r['rms']['x_t'] for r in rows], 3)}",
             f"- midpoint, shared noise: {mean_se([r['rms']['mix_shared'] for r in rows], 3)}",
             f"- midpoint, independent noise: {mean_se([r['rms']['mix_independent'] for r in rows], 3)}",
             "", "| | nearest-training-digit distance | classifier confidence |", "|---|---|---|"]
    for key in ("sources", "pixel", "decoded"):
        lines.append(f"| {key} | {mean_se([r['nn'][key] for r in rows], 3)} "
                     f"| {mean_se([r['confidence'][key] for r in rows], 3)} |")
    nn, conf = [r["nn_pixel_minus_decoded"] for r in rows], [r["confidence_decoded_minus_pixel"] for r in rows]
    lines += ["", f"pixel minus decoded midpoint, distance: {mean_se([p[0] for p in nn], 3)}; "
              f"in its paired SE: {mean_se([z(p) for p in nn], 1)}",
              f"decoded minus pixel midpoint, confidence: {mean_se([p[0] for p in conf], 3)}; "
              f"in its paired SE: {mean_se([z(p) for p in conf], 1)}",
              "", f"Fig. 9: fraction of decodings with the source's class ({rows[0]['k']} per source, 10 sources, "
              "chance 0.1):", ""]
    for t in rows[0]["survival"]:
        lines.append(f"- t = {t}: {mean_se([r['survival'][t][0] for r in rows], 2)}; "
                     f"its SE within a seed, median "
                     f"{torch.tensor([r['survival'][t][1] for r in rows]).median().item():.2f}")
    d = [r["survival_100_minus_1000"] for r in rows]
    lines += ["", f"t = 100 minus t = 1000, paired over sources: {mean_se([p[0] for p in d], 2)}; "
              f"in its SE: {mean_se([z(p) for p in d], 1)}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, n_pairs=16, t_mix=250, k=2, train_steps=0)
