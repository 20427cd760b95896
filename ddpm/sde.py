"""Continuous time (Song et al. 2021): DDPM's chain as the variance-preserving SDE, the reverse-time SDE and the
probability-flow ODE with their samplers, the ODE's exact log-likelihood (the instantaneous change of variables
of Chen et al. 2018), and the continuous-time diffusion loss of Kingma et al. (2021).

Time t runs over [0, 1], t = 0 being the data; step t ∈ {1, …, T} of a discrete schedule sits at time t/T.
A score is any callable ``score(x, t)`` of a batch x [B, D] and one time t (a Python float), such as
:class:`MixtureScore`, the exact score of :class:`ddpm.GaussianMixture` data at every t.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .oracles import GaussianMixture
from .schedule import NoiseSchedule

Score = Callable[[Tensor, float], Tensor]


def _t(t) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class VPSDE:
    """dx = −½ β(t) x dt + √β(t) dW on t ∈ [0, 1] (Song et al. 2021, Eq. 11). Given x(0), x(t) is
    N(√ᾱ(t) x(0), 1 − ᾱ(t)) with ᾱ(t) = exp(−∫_0^t β), and given x(s) it is N(√(ᾱ(t)/ᾱ(s)) x(s),
    1 − ᾱ(t)/ᾱ(s)): a DDPM step with β = 1 − ᾱ(t)/ᾱ(s), exactly."""

    def __init__(self, integral: Callable[[Tensor], Tensor], beta: Callable[[Tensor], Tensor], name: str):
        self._integral, self._beta, self.name = integral, beta, name

    @classmethod
    def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0) -> "VPSDE":
        """β(t) = β_min + t (β_max − β_min): the limit of the paper's β_t = β(t/T)/T as T grows
        (β_min = T β_1 = 0.1 and β_max = T β_T = 20 for T = 1000)."""
        d = beta_max - beta_min
        return cls(lambda t: beta_min * t + 0.5 * d * t ** 2, lambda t: beta_min + d * t,
                   f"linear({beta_min:g}, {beta_max:g})")

    @classmethod
    def from_schedule(cls, s: NoiseSchedule) -> "VPSDE":
        """The continuous limit of a linear :class:`NoiseSchedule`: β_min = T β_1, β_max = T β_T."""
        return cls.linear(float(s.betas[1]) * s.T, float(s.betas[-1]) * s.T)

    @classmethod
    def cosine(cls, s: float = 0.008) -> "VPSDE":
        """ᾱ(t) = f(t)/f(0), f(t) = cos²(π/2 · (t + s)/(1 + s)) (Nichol & Dhariwal 2021), so that
        β(t) = −d log ᾱ/dt = π/(1 + s) · tan(π/2 · (t + s)/(1 + s)); ᾱ(1) = 0 and β(1) is infinite."""
        c = math.pi / 2 / (1 + s)
        return cls(lambda t: -2 * (torch.log(torch.cos(c * (t + s))) - math.log(math.cos(c * s))),
                   lambda t: 2 * c * torch.tan(c * (t + s)), f"cosine({s:g})")

    def integral(self, t) -> Tensor:
        """∫_0^t β(s) ds = −log ᾱ(t), float64."""
        return self._integral(_t(t))

    def beta(self, t) -> Tensor:
        """β(t) = g(t)², float64."""
        return self._beta(_t(t))

    def alpha_bar(self, t) -> Tensor:
        return torch.exp(-self.integral(t))

    def log_snr(self, t) -> Tensor:
        """log SNR(t) = log(ᾱ/(1 − ᾱ)) = −log(exp(∫β) − 1), accurate near t = 0."""
        return -torch.log(torch.expm1(self.integral(t)))

    def time_of_snr(self, snr: float) -> float:
        """The time t at which SNR(t) = ``snr``, by bisection (SNR falls as t grows)."""
        lo, hi, target = 0.0, 1.0, math.log(snr)
        if not self.log_snr(hi) < target:
            raise ValueError(f"SNR never falls to {snr:g} on [0, 1] (SNR(1) = {math.exp(self.log_snr(hi)):.3g})")
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.log_snr(mid) > target else (lo, mid)
        return (lo + hi) / 2

    def drift(self, x: Tensor, t: float) -> Tensor:
        """f(x, t) = −½ β(t) x."""
        return -0.5 * float(self.beta(t)) * x

    def discretize(self, T: int) -> NoiseSchedule:
        """The DDPM schedule whose chain is this SDE seen at the times t/T: β_t = 1 − ᾱ(t/T)/ᾱ((t−1)/T)."""
        grid = self.integral(torch.arange(T + 1, dtype=torch.float64) / T)
        return NoiseSchedule(-torch.expm1(-(grid[1:] - grid[:-1])))

    def __repr__(self) -> str:
        return f"VPSDE.{self.name}"


class MixtureScore:
    """The exact score ∇ log p_t of :class:`GaussianMixture` data under ``sde`` at any time t ∈ [0, 1]: the
    marginal is the mixture diffused to ᾱ(t) (:meth:`GaussianMixture.diffused`)."""

    def __init__(self, mixture: GaussianMixture, sde: VPSDE):
        self.mixture, self.sde = mixture, sde

    def marginal(self, t: float) -> GaussianMixture:
        return self.mixture.diffused(float(self.sde.alpha_bar(t)))

    def __call__(self, x: Tensor, t: float) -> Tensor:
        return self.marginal(t).score(x, 0)

    def log_density(self, x: Tensor, t: float) -> Tensor:
        return self.marginal(t).log_density(x, 0)


def mixture_denoiser(mixture: GaussianMixture) -> Callable[[Tensor, float, float], Tensor]:
    """x̂(z; α, σ) = E[x_0 | z] for z = α x_0 + σ ε and any α, σ > 0 (variance-preserving or not): z/√(α² + σ²)
    is the variance-preserving case ᾱ = α²/(α² + σ²), where Tweedie's formula gives the answer."""

    def denoise(z: Tensor, alpha: float, sigma: float) -> Tensor:
        scale = math.hypot(alpha, sigma)
        ab, one_minus_ab = (alpha / scale) ** 2, (sigma / scale) ** 2
        zp = z / scale
        return (zp + one_minus_ab * mixture.diffused(ab).score(zp, 0)) / math.sqrt(ab)

    return denoise


# -- the two reverse-time processes ---------------------------------------------------------------------------

def reverse_drift(sde: VPSDE, score: Score, x: Tensor, t: float) -> Tensor:
    """f − g² ∇ log p_t, the drift of the reverse-time SDE (Anderson 1982; Song et al. 2021, Eq. 6)."""
    return sde.drift(x, t) - float(sde.beta(t)) * score(x, t)


def probability_flow(sde: VPSDE, score: Score, x: Tensor, t: float) -> Tensor:
    """f − ½ g² ∇ log p_t, the velocity of the probability-flow ODE (Song et al. 2021, Eq. 13)."""
    return sde.drift(x, t) - 0.5 * float(sde.beta(t)) * score(x, t)


def time_grid(n_steps: int, start: float = 1.0, end: float = 0.0) -> list[float]:
    """n_steps + 1 evenly spaced times from ``start`` to ``end``."""
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    return torch.linspace(start, end, n_steps + 1, dtype=torch.float64).tolist()


def ode_step(velocity: Callable[[Tensor, float], Tensor], x: Tensor, t: float, t_next: float,
             method: str = "rk4") -> Tensor:
    """One step of Euler (order 1), Heun (order 2) or the classical Runge–Kutta method (order 4)."""
    h = t_next - t
    k1 = velocity(x, t)
    if method == "euler":
        return x + h * k1
    if method == "heun":
        return x + h / 2 * (k1 + velocity(x + h * k1, t_next))
    if method == "rk4":
        k2 = velocity(x + h / 2 * k1, t + h / 2)
        k3 = velocity(x + h / 2 * k2, t + h / 2)
        k4 = velocity(x + h * k3, t_next)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    raise ValueError(f"method must be 'euler', 'heun' or 'rk4', got {method!r}")


@torch.no_grad()
def ode_sample(sde: VPSDE, score: Score, x1: Tensor, n_steps: int, method: str = "rk4", end: float = 0.0,
               keep_path: bool = False):
    """Solve the probability-flow ODE from x(1) = ``x1`` back to t = ``end`` with ``n_steps`` equal steps.
    Deterministic; with ``keep_path`` also returns x at every time of the grid, [n_steps + 1, B, D]."""
    ts = time_grid(n_steps, 1.0, end)
    x, path = x1, [x1]
    for t, t_next in zip(ts, ts[1:]):
        x = ode_step(lambda y, u: probability_flow(sde, score, y, u), x, t, t_next, method)
        path.append(x)
    return (x, torch.stack(path)) if keep_path else x


@torch.no_grad()
def reverse_sde_sample(sde: VPSDE, score: Score, x1: Tensor, n_steps: int, generator=None, end: float = 0.0,
                       keep_path: bool = False):
    """Euler–Maruyama on the reverse-time SDE dx = [f − g² ∇ log p_t] dt + g dW̄ from t = 1 to ``end``:
    x ← x − (f − g² s) Δt + g √Δt z at each step back, z ~ N(0, I), with the drift and g at the step's start.
    (Song et al. return the last step's mean, without its noise, to remove the noise of images; data with a
    density, as here, need every step's noise.)"""
    ts = time_grid(n_steps, 1.0, end)
    x, path = x1, [x1]
    for t, t_next in zip(ts, ts[1:]):
        dt = t - t_next
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x - reverse_drift(sde, score, x, t) * dt + math.sqrt(float(sde.beta(t)) * dt) * z
        path.append(x)
    return (x, torch.stack(path)) if keep_path else x


@torch.no_grad()
def pc_sample(sde: VPSDE, score: Score, x1: Tensor, n_steps: int, n_corrector: int = 1, snr: float = 0.16,
              generator=None, end: float = 0.0) -> Tensor:
    """Predictor–corrector sampling (Song et al. 2021, Algorithm 5, with their step-size rule). At each time t of
    the grid, ``n_corrector`` Langevin steps x ← x + ε s + √(2ε) z that leave p_t invariant, with
    ε = 2 α (r ‖z‖ / ‖s‖)², α = 1 − β(t) Δt and r = ``snr`` (norms averaged over the batch); then one
    Euler–Maruyama step of the reverse SDE (the predictor, as :func:`reverse_sde_sample`)."""
    ts = time_grid(n_steps, 1.0, end)
    x = x1
    for t, t_next in zip(ts, ts[1:]):
        dt = t - t_next
        alpha = 1 - float(sde.beta(t)) * dt
        for _ in range(n_corrector):
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            s = score(x, t)
            eps = 2 * alpha * (snr * z.norm(dim=1).mean() / s.norm(dim=1).mean()) ** 2
            x = x + eps * s + (2 * eps).sqrt() * z
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x - reverse_drift(sde, score, x, t) * dt + math.sqrt(float(sde.beta(t)) * dt) * z
    return x


# -- the exact likelihood of the ODE -----------------------------------------------------------------------------

def divergence(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """(fn(x), ∇·fn(x)) for each row of x [B, D], the divergence exact: the trace of the D × D Jacobian, one
    backward pass per dimension (cheap for small D; Song et al. estimate it with Hutchinson's trick instead)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for i in range(x.shape[1]):
            (grad,) = torch.autograd.grad(out[:, i].sum(), x, retain_graph=i < x.shape[1] - 1)
            div = div + grad[:, i]
    return out.detach(), div.detach()


def ode_log_likelihood(sde: VPSDE, score: Score, x0: Tensor, n_steps: int,
                       prior_log_density: Callable[[Tensor], Tensor], method: str = "rk4",
                       start: float = 0.0) -> Tensor:
    """log p_0(x_0) for each row by the instantaneous change of variables (Chen et al. 2018): along the
    probability-flow ODE, d log p_t(x_t)/dt = −∇·v(x_t, t), so

        log p_0(x_0) = log p_1(x_1) + ∫_0^1 ∇·v(x_t, t) dt,

    solving for x_t and the integral together from t = ``start`` to 1; ``prior_log_density`` is log p_1."""
    D = x0.shape[1]

    def augmented(y: Tensor, t: float) -> Tensor:
        v, div = divergence(lambda x: probability_flow(sde, score, x, t), y[:, :D])
        return torch.cat([v, div[:, None]], 1)

    y = torch.cat([x0.detach(), x0.new_zeros(x0.shape[0], 1)], 1)
    ts = time_grid(n_steps, start, 1.0)
    for t, t_next in zip(ts, ts[1:]):
        y = ode_step(augmented, y, t, t_next, method)
    return prior_log_density(y[:, :D]) + y[:, D]


# -- the continuous-time bound -----------------------------------------------------------------------------------

def gauss_legendre_panels(n_panels: int = 32, order: int = 16, first: float = 1e-7) -> tuple[Tensor, Tensor]:
    """Nodes and weights on [0, 1]: ``order``-point Gauss–Legendre on each of ``n_panels`` panels whose edges
    0, first, …, 1 grow geometrically, so that they resolve an integrand that is steep near t = 0."""
    edges = torch.cat([torch.zeros(1, dtype=torch.float64),
                       torch.logspace(math.log10(first), 0, n_panels, dtype=torch.float64)])
    u, w = (torch.as_tensor(a, dtype=torch.float64) for a in np.polynomial.legendre.leggauss(order))
    lo, hi = edges[:-1, None], edges[1:, None]
    return ((lo + hi) / 2 + (hi - lo) / 2 * u).flatten(), ((hi - lo) / 2 * w).flatten()


def diffusion_loss(alpha: Callable[[Tensor], Tensor], sigma: Callable[[Tensor], Tensor],
                   denoise: Callable[[Tensor, float, float], Tensor], x0: Tensor, noise: Tensor,
                   n_panels: int = 32, order: int = 16) -> Tensor:
    """The continuous-time diffusion loss of Kingma et al. (2021), for each row, with one noise draw per row:

        L_∞(x_0) = ½ ∫_0^1 −SNR′(t) ‖x_0 − x̂(z_t; α_t, σ_t)‖² dt,   z_t = α_t x_0 + σ_t ε,   SNR = α²/σ²,

    in the schedule's own time t, by :func:`gauss_legendre_panels`. ``alpha`` and ``sigma`` map float64
    times to tensors (SNR′ comes from them by autograd); ``denoise(z, α, σ)`` is the model's x̂."""
    nodes, weights = gauss_legendre_panels(n_panels, order)
    t = nodes.clone().requires_grad_(True)
    snr = (alpha(t) / sigma(t)) ** 2
    (d_snr,) = torch.autograd.grad(snr.sum(), t)
    a, s = alpha(nodes).tolist(), sigma(nodes).tolist()
    x0, noise = x0.double(), noise.double()
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for w, ai, si in zip((weights * -d_snr).tolist(), a, s):
        err = x0 - denoise(ai * x0 + si * noise, ai, si)
        total += w * err.pow(2).sum(1)
    return total / 2
