"""The variance schedule β_1..β_T and every coefficient derived from it (Ho et al. 2020, §2).

All arrays are float64 tensors of length T+1 indexed by the paper's t: index 0 stands for the clean
data (β_0 = 0, ᾱ_0 = 1), so that ``s.alpha_bars[t]`` is ᾱ_t with no off-by-one. Coefficients that
are undefined at t = 0 (those of q(x_(t-1) | x_t, x_0)) hold NaN there. Values are cast to the
data's dtype only where they are used (:func:`extract`).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

VARIANCES = ("fixedlarge", "fixedsmall")
"""The reverse process's fixed variances (§3.2): σ_t² = β_t ("fixedlarge") or β̃_t ("fixedsmall")."""


def check_variance(variance: str) -> str:
    """``variance`` if it names one of :data:`VARIANCES`, else a ValueError that lists them."""
    if variance not in VARIANCES:
        raise ValueError(f"variance must be 'fixedlarge' or 'fixedsmall' (sigma_t^2 = beta_t or "
                         f"beta-tilde_t), got {variance!r}")
    return variance


class NoiseSchedule:
    """β_1..β_T with α_t = 1 − β_t, ᾱ_t = Π α_s and the posterior coefficients of Eq. 7."""

    def __init__(self, betas):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1:
            raise ValueError("a schedule needs T >= 1 steps; got an empty list of betas")
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
            bad = betas[~(torch.isfinite(betas) & (betas > 0) & (betas < 1))]
            raise ValueError(
                f"every beta_t must lie in the open interval (0, 1); got {bad[:5].tolist()} "
                "(beta_t is the variance of the noise added at step t)"
            )
        self.T = betas.numel()
        self.betas = torch.cat([betas.new_zeros(1), betas])
        self.alphas = 1.0 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        ab, ab_prev = self.alpha_bars[1:], self.alpha_bars[:-1]
        nan = betas.new_full((1,), math.nan)
        # Eq. 7: beta-tilde_t and the two weights of the posterior mean.
        self.posterior_variance = torch.cat([nan, betas * (1 - ab_prev) / (1 - ab)])
        self.posterior_mean_coef1 = torch.cat([nan, betas * ab_prev.sqrt() / (1 - ab)])
        self.posterior_mean_coef2 = torch.cat([nan, (1 - ab_prev) * self.alphas[1:].sqrt() / (1 - ab)])
        # Every per-t coefficient the math modules use, computed once (as the original does) rather
        # than re-derived from ᾱ in each call: Eq. 2's, Eq. 4's and its inverses'.
        self.sqrt_alphas = self.alphas.sqrt()
        self.sqrt_betas = self.betas.sqrt()
        self.sqrt_alpha_bars = self.alpha_bars.sqrt()
        self.sqrt_one_minus_alpha_bars = (1 - self.alpha_bars).sqrt()
        self.log_one_minus_alpha_bars = (1 - self.alpha_bars).log()
        self.sqrt_recip_alpha_bars = (1 / self.alpha_bars).sqrt()
        self.sqrt_recipm1_alpha_bars = (1 / self.alpha_bars - 1).sqrt()
        self.fixedlarge_variance = self._model_variance(self.betas)
        self.fixedsmall_variance = self._model_variance(self.posterior_variance)
        self.fixedlarge_log_variance = self.fixedlarge_variance.log()
        self.fixedsmall_log_variance = self.fixedsmall_variance.log()
        # Host copies for the sampler, which uses one t for the whole batch: a Python float multiplies
        # a tensor with no indexing kernel and no read-back from the device.
        self._host = {name: value.tolist() for name, value in vars(self).items() if isinstance(value, Tensor)}

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> "NoiseSchedule":
        """The paper's schedule: β rises linearly from β_1 to β_T (§4)."""
        _check_T(T)
        return cls(torch.linspace(beta_1, beta_T, T, dtype=torch.float64))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Nichol & Dhariwal (2021), Eq. 17: ᾱ_t = f(t)/f(0), f(t) = cos²(π/2 · (t/T + s)/(1 + s))."""
        _check_T(T)
        t = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(betas)

    @classmethod
    def constant(cls, T: int, beta: float) -> "NoiseSchedule":
        """β_t = β for every t, as in the figures of many tutorials."""
        _check_T(T)
        return cls(torch.full((T,), float(beta), dtype=torch.float64))

    # -- derived quantities -------------------------------------------------------------------
    @property
    def snr(self) -> Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) of q(x_t | x_0); infinite at t = 0."""
        return self.alpha_bars / (1 - self.alpha_bars)

    def model_variance(self, variance: str) -> Tensor:
        """σ_t² of p_θ(x_(t-1) | x_t) (§3.2), length T+1 (NaN at t = 0).

        "fixedlarge" is σ_t² = β_t and "fixedsmall" is σ_t² = β̃_t. At t = 1 both use β̃_2, as the
        original implementation does: β̃_1 = 0 would make the decoder L_0 a point mass.
        """
        check_variance(variance)
        return getattr(self, f"{variance}_variance")

    def _model_variance(self, var: Tensor) -> Tensor:
        var = var.clone()
        var[0] = math.nan
        var[1] = self.posterior_variance[2] if self.T >= 2 else self.betas[1]
        return var

    def at(self, name: str, t, x: Tensor):
        """The coefficient array ``name`` at timesteps ``t``, ready to multiply ``x``.

        For one Python int t (the sampler's case) it is a Python float from the host copy: no kernel
        and no device synchronisation. Otherwise it is :func:`extract`'s tensor.
        """
        if isinstance(t, int):
            return self._host[name][t]
        return extract(getattr(self, name), t, x)

    def checked(self, t):
        """``t`` checked as by :meth:`check_t`, but a Python int stays a Python int (see :meth:`at`)."""
        if isinstance(t, int) and not isinstance(t, bool):
            if not 1 <= t <= self.T:
                raise ValueError(f"timesteps must lie in {{1, ..., T={self.T}}} (the paper's t; 0 is the "
                                 f"clean data), got {t}")
            return t
        return self.check_t(t)

    def to(self, device) -> "NoiseSchedule":
        """The same schedule with every array on ``device`` (still float64).

        Keep the schedule on the data's device: indexing a CPU schedule with GPU timesteps makes the GPU
        wait for the CPU at every step.
        """
        moved = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(moved, name, value.to(device))
        return moved

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def check_t(self, t) -> Tensor:
        """``t`` as a long tensor, after checking that every entry is a timestep in {1, …, T}.

        On an accelerator the range check runs asynchronously (it fails at the next synchronisation)
        so that it never stalls the device.
        """
        t = torch.as_tensor(t)
        if t.numel() == 0:
            return t.long()
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"timesteps must be integers in {{1, ..., {self.T}}}, got dtype {t.dtype}")
        if t.device.type != "cpu":
            torch._assert_async(((t >= 1) & (t <= self.T)).all(), f"timesteps must lie in {{1, ..., T={self.T}}}")
            return t.long()
        if t.min() < 1 or t.max() > self.T:
            raise ValueError(
                f"timesteps must lie in {{1, ..., T={self.T}}} (the paper's t; 0 is the clean data), "
                f"got values from {int(t.min())} to {int(t.max())}"
            )
        return t.long()

    def __repr__(self) -> str:
        return f"NoiseSchedule(T={self.T}, beta_1={self.betas[1]:.3g}, beta_T={self.betas[-1]:.3g})"


def extract(values: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """``values[t]`` cast to ``x``'s dtype and device, shaped to broadcast against ``x``.

    ``t`` is a scalar or a tensor of shape [B] with B = x.shape[0].
    """
    t = torch.as_tensor(t, device=values.device)
    if t.dim() > 1 or (t.dim() == 1 and x.dim() >= 1 and t.shape[0] not in (1, x.shape[0])):
        raise ValueError(
            f"t must be a scalar or have shape [B] with B = x.shape[0] = {x.shape[0] if x.dim() else 1}; "
            f"got t of shape {tuple(t.shape)}"
        )
    out = values[t].to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float64)
    if t.dim() == 1:
        out = out.reshape(-1, *([1] * (x.dim() - 1)))
    return out


def _check_T(T) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"T, the number of diffusion steps, must be an integer >= 1; got {T!r}")
