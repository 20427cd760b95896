"""Chapter 10's Fréchet distance against the number of DDIM steps, over several seeds.

For each seed, train the digits model as the chapter does in quick mode (400 steps of batch 64), draw 64
digits with DDIM (eta = 0) from one x_T at 5, 10, 20, 50 and 200 steps and with Algorithm 2, and score
each set with chapter 9's digits Fréchet distance against 64 held-out digits.

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


def one_seed(seed: int, steps: int = 400, n_fd: int = 64) -> dict:
    s = ddpm.NoiseSchedule.linear(T=1000, beta_1=1e-4, beta_T=0.02)
    with tempfile.TemporaryDirectory() as tmp:
        config = ddpm.TrainConfig(data="digits", steps=steps, batch_size=64, lr=2e-4, seed=seed,
                                  out_dir=tmp,
                                  sample_every=0, checkpoint_every=steps)
        model = train(config, progress=False).ema.eval()
    test = ddpm.digits("test")
    gen = torch.Generator().manual_seed(seed)
    classifier = ddpm.train_digits_classifier(seed=seed)
    order = torch.randperm(len(test), generator=gen)
    scale = ddpm.frechet_reference_scale(classifier, seed=seed, reference=test[order[:2 * n_fd]])
    real = test[order[:n_fd]]
    x_T = torch.randn(n_fd, 1, 8, 8, generator=gen)
    fd = {str(n): ddpm.digits_frechet_distance(ddpm.ddim_sample(s, model, x_T.shape, n, eta=0.0, x_T=x_T),
                                                real, classifier) for n in N_STEPS}
    fd["algorithm 2"] = ddpm.digits_frechet_distance(ddpm.sample(s, model, x_T.shape, generator=gen), real,
                                                     classifier)
    return {"seed": seed, "steps": steps, "n_fd": n_fd, "fd": fd, "real_vs_real": scale.real_vs_real}


def summarize(rows: list[dict]) -> str:
    lines = [f"{len(rows)} seeds ({', '.join(str(r['seed']) for r in rows)}); mean ± standard error over "
             "seeds (smallest to largest)", "", "| sampler | Fréchet distance |", "|---|---|"]
    for key in rows[0]["fd"]:
        label = key if key == "algorithm 2" else f"DDIM, eta = 0, {key} steps"
        lines.append(f"| {label} | {mean_se([r['fd'][key] for r in rows], 1)} |")
    lines.append(f"| real vs real | {mean_se([r['real_vs_real'] for r in rows], 1)} |")
    wins = sum(r["fd"]["50"] < r["fd"]["algorithm 2"] for r in rows)
    lines += ["", "Within each seed (the same classifier and real digits for every sampler), the difference "
              "from DDIM with 200 steps:", ""]
    for key in rows[0]["fd"]:
        if key != "200":
            lines.append(f"- {key}: {mean_se([r['fd'][key] - r['fd']['200'] for r in rows], 1)}")
    lines += ["", f"DDIM with 50 steps closer to the real digits than Algorithm 2 in {wins} of {len(rows)} seeds"]
    return "\n".join(lines)


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, steps=400, n_fd=64)
