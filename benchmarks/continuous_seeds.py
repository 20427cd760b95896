"""Chapter 11's checks (continuous time) over several seeds.

For each seed, exactly the chapter's quick-mode computation, with its random draws in the chapter's order (so
that seed S reproduces a chapter run with DDPM_SEED=S): the linear-time MMD z of the three samplers and the
two controls; the ODE log-likelihood's errors against the true log-density for 8 to 256 RK4 steps; the DDPM
bound's gap at T = 10, 100, 1000; DDIM's distance to the ODE solution and its fitted slope; and the
continuous-time diffusion loss of the four schedules. It records what the chapter's asserts compare with
their bars, so that the bars' false-alarm rates can be estimated.

    python benchmarks/continuous_seeds.py --seeds 1 2 3 4 5 --json benchmarks/continuous_seeds.jsonl
    python benchmarks/continuous_seeds.py --summarize benchmarks/continuous_seeds.jsonl
"""

from __future__ import annotations

import math

import torch

import ddpm
from ddpm.sde import (MixtureScore, VPSDE, diffusion_loss, mixture_denoiser, ode_log_likelihood, ode_sample,
                      pc_sample, reverse_sde_sample)
from seeds import main, mean_se

f64 = torch.float64


def linear_mmd_z(a, b, h=0.05):
    m = min(len(a), len(b)) // 2
    k = lambda u, v: torch.exp(-(u - v).pow(2).sum(1) / (2 * h**2))
    terms = k(a[:m], a[m:2 * m]) + k(b[:m], b[m:2 * m]) - k(a[:m], b[m:2 * m]) - k(a[m:2 * m], b[:m])
    return (terms.mean() / (terms.std() / math.sqrt(m))).item()


def vp_between(sde, snr_max, snr_min):
    a, b = sde.time_of_snr(snr_max), sde.time_of_snr(snr_min)
    integral = lambda u: sde.integral(a + u * (b - a))
    return lambda u: torch.exp(-integral(u) / 2), lambda u: (-torch.expm1(-integral(u))).sqrt()


def ve_between(snr_max, snr_min):
    lo, hi = snr_max ** -0.5, snr_min ** -0.5
    return lambda u: torch.ones_like(u), lambda u: lo * (hi / lo) ** u


def one_seed(seed: int, n: int = 20_000) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vp = VPSDE.linear(0.1, 20.0)
    mixture = ddpm.GaussianMixture.gaussians8(ddpm.NoiseSchedule.linear(1000))
    score, wrong = MixtureScore(mixture, vp), MixtureScore(mixture, VPSDE.cosine())
    row = {"seed": seed, "n": n}

    # samplers and the two-sample test
    x1 = torch.randn(n, 2, generator=gen, dtype=f64)
    samples = {"sde": reverse_sde_sample(vp, score, x1, 500, gen), "ode": ode_sample(vp, score, x1, 50),
               "pc": pc_sample(vp, score, x1, 100, generator=gen),
               "control sde 10": reverse_sde_sample(vp, score, x1, 10, gen),
               "control cosine score": ode_sample(vp, wrong, x1, 50)}
    row["z"] = {name: linear_mmd_z(x, mixture.sample(n, gen)) for name, x in samples.items()}
    reverse_sde_sample(vp, score, x1[:24], 500, gen)  # the chapter's figure draws these

    # the ODE's log-likelihood
    x0 = mixture.sample(500, gen)
    true_ll = mixture.log_density(x0, 0)
    steps = [8, 16, 32, 64, 128, 256]
    errors = [(ode_log_likelihood(vp, score, x0, k, lambda x: score.log_density(x, 1.0)) - true_ll).abs()
              for k in steps]
    row["ll_steps"], row["ll_mean_err"] = steps, [e.mean().item() for e in errors]
    row["ll_max_err"] = [e.max().item() for e in errors]

    # the DDPM bound
    n_bound = 2000
    x0 = mixture.sample(n_bound, gen)
    nll = -mixture.log_density(x0, 0)
    to_nats = 2 * math.log(2)
    row["gap"], row["gap_se"], row["gap_package"] = {}, {}, {}
    for T in (10, 100, 1000):
        s_T = vp.discretize(T)
        oracle = ddpm.GaussianMixture(s_T, mixture.means, mixture.stds)
        bound = ddpm.vlb(s_T, oracle, x0, "fixedlarge", clip_denoised=False, discrete=False, generator=gen)
        rest = (bound.prior_bpd + bound.terms_bpd[:, 1:].sum(1)) * to_nats
        one = torch.ones(n_bound, dtype=torch.long)
        x_1 = ddpm.q_sample(s_T, x0, one, torch.randn(x0.shape, generator=gen, dtype=f64))
        mean_1 = ddpm.p_mean_variance(s_T, oracle, x_1, one, "fixedlarge", clip_denoised=False).mean
        l_0 = -ddpm.gaussian_log_likelihood(x0, mean_1, 0.5 * math.log(s_T.betas[1])).sum(1)
        d = rest + l_0 - nll
        row["gap"][T], row["gap_se"][T] = d.mean().item(), d.std().item() / math.sqrt(n_bound)
        row["gap_package"][T] = (bound.total_bpd * to_nats - nll).mean().item()

    # DDIM against the ODE
    s_1024 = vp.discretize(1024)
    eps_star = ddpm.GaussianMixture(s_1024, mixture.means, mixture.stds)
    x_T = torch.randn(500, 2, generator=gen, dtype=f64)
    reference = ode_sample(vp, score, x_T, 512)
    row["ode_256_vs_512"] = (ode_sample(vp, score, x_T, 256) - reference).norm(dim=1).mean().item()
    ddim_steps = [16, 32, 64, 128, 256, 512, 1024]
    row["ddim_steps"], row["ddim_err"] = ddim_steps, []
    for k in ddim_steps:
        x = ddpm.ddim_sample(s_1024, eps_star, x_T.shape, k, eta=0.0, clip_denoised=False, x_T=x_T, dtype=f64)
        row["ddim_err"].append((x - reference).norm(dim=1).mean().item())
    logs = torch.tensor([[math.log(k), math.log(e)] for k, e in zip(ddim_steps, row["ddim_err"])], dtype=f64)
    row["ddim_slope"] = torch.linalg.lstsq(torch.stack([logs[2:, 0], torch.ones(5, dtype=f64)], 1),
                                           logs[2:, 1:]).solution[0, 0].item()

    # the continuous-time diffusion loss
    schedules = {"linear": vp_between(vp, 1e4, 1e-4), "cosine": vp_between(VPSDE.cosine(), 1e4, 1e-4),
                 "ve": ve_between(1e4, 1e-4), "linear 1e3": vp_between(vp, 1e3, 1e-4)}
    x0 = mixture.sample(2000, gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=f64)
    losses = {name: diffusion_loss(a, s, mixture_denoiser(mixture), x0, eps) for name, (a, s) in schedules.items()}
    row["loss"] = {name: value.mean().item() for name, value in losses.items()}
    cut = losses["linear"] - losses["linear 1e3"]
    row["cut"], row["cut_se"] = cut.mean().item(), cut.std().item() / math.sqrt(len(cut))
    return row


def summarize(rows: list[dict]) -> str:
    def line(text, values, digits=2):
        return f"- {text}: {mean_se(values, digits)}"

    lines = [f"{len(rows)} seeds ({', '.join(str(r['seed']) for r in rows)}); mean ± standard error over seeds "
             "(smallest to largest)", "", "Two-sample test, linear-time MMD z (bar 4.5; samplers below, controls above):"]
    for name in rows[0]["z"]:
        lines.append(line(f"z, {name}", [r["z"][name] for r in rows]))
    lines += ["", "ODE log-likelihood (RK4) against the true log-density:"]
    lines.append(line("largest error at 256 steps, nats", [r["ll_max_err"][-1] for r in rows], 6))
    lines.append(line("mean error at 256 steps, nats (bar 2e-5)", [r["ll_mean_err"][-1] for r in rows], 8))
    lines.append(line("smaller of the last two observed orders (bar 3)",
                      [min(math.log2(a / b) for a, b in zip(r["ll_mean_err"][-3:], r["ll_mean_err"][-2:]))
                       for r in rows]))
    lines += ["", "DDPM bound minus the true -log q, nats (Gaussian decoder with variance beta_1):"]
    for T in ("10", "100", "1000"):
        lines.append(line(f"gap at T = {T}", [r["gap"][T] for r in rows], 3))
        lines.append(line(f"gap at T = {T} in its standard errors (bar: above -4.5)",
                          [r["gap"][T] / r["gap_se"][T] for r in rows]))
        lines.append(line(f"the same with the package's decoder variance (beta-tilde_2)",
                          [r["gap_package"][T] for r in rows], 3))
    for a, b in (("10", "100"), ("100", "1000")):
        lines.append(line(f"gap(T = {a}) - gap(T = {b}) in combined standard errors (bar 1.5)",
                          [(r["gap"][a] - r["gap"][b]) / math.hypot(r["gap_se"][a], r["gap_se"][b]) for r in rows]))
    lines += ["", "DDIM (eta = 0, exact eps) against the RK4 solution of the ODE from the same x_T:"]
    lines.append(line("mean distance at 1024 steps", [r["ddim_err"][-1] for r in rows], 5))
    lines.append(line("fitted slope, 64 to 1024 steps (bar -1.2 to -0.8)", [r["ddim_slope"] for r in rows], 3))
    lines.append(line("RK4 256 vs 512 steps (mean distance) over DDIM's last distance (bar 0.01)",
                      [r["ode_256_vs_512"] / r["ddim_err"][-1] for r in rows], 4))
    lines += ["", "Continuous-time diffusion loss, nats:"]
    lines.append(line("linear VP, SNR 1e4 to 1e-4", [r["loss"]["linear"] for r in rows], 3))
    for name in ("cosine", "ve"):
        lines.append(line(f"|{name} - linear| (bar 1e-4)",
                          [abs(r["loss"][name] - r["loss"]["linear"]) for r in rows], 8))
    lines.append(line("SNR 1e3 to 1e4 part minus log(101/11), in standard errors (bar 4.5 either way)",
                      [(r["cut"] - math.log(101 / 11)) / r["cut_se"] for r in rows]))
    return "\n".join(lines)


if __name__ == "__main__":
    main(__doc__, one_seed, summarize, n=20_000)
