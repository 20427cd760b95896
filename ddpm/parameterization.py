"""What the network outputs (Ho et al. 2020, §3.2 and Table 2): ε ("eps", Eq. 11), the posterior mean
μ̃_t ("mu", Eq. 7) or x_0 ("x0", Eq. 15). All three describe the same reverse step, so ``as_eps_model``
turns any of them into an ε-model, and sampling and the bound need no special case.
"""

from __future__ import annotations

from torch import Tensor, nn

from .posterior import predict_eps_from_x0, q_posterior
from .reverse import EpsModel, call_eps_model, timesteps_like
from .schedule import NoiseSchedule, extract

PARAMETERIZATIONS = ("eps", "mu", "x0")


def check_parameterization(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS} (what the network outputs), "
                         f"got {parameterization!r}")
    return parameterization


def target(s: NoiseSchedule, parameterization: str, x0: Tensor, xt: Tensor, t, noise: Tensor) -> Tensor:
    """What a perfect network of this parameterization outputs at x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε:
    ε, μ̃_t(x_t, x_0) (Eq. 7) or x_0. The unweighted MSE against it is Table 2's ‖ε − ε_θ‖² (L_simple)
    or ‖μ̃ − μ_θ‖²."""
    if check_parameterization(parameterization) == "eps":
        return noise
    return x0 if parameterization == "x0" else q_posterior(s, x0, xt, t)[0]


def eps_from_output(s: NoiseSchedule, parameterization: str, xt: Tensor, t, output: Tensor) -> Tensor:
    """The ε that the network's ``output`` stands for: x_0 from μ̃ by inverting Eq. 7, ε from x_0 by Eq. 4."""
    if check_parameterization(parameterization) == "eps":
        return output
    t = timesteps_like(s, t, xt)
    x0 = output
    if parameterization == "mu":  # μ̃ = c1 x_0 + c2 x_t, with c1 > 0 for every t ≥ 1
        x0 = (output - extract(s.posterior_mean_coef2, t, xt) * xt) / extract(s.posterior_mean_coef1, t, xt)
    return predict_eps_from_x0(s, xt, t, x0)


class AsEpsModel(nn.Module):
    """A network that outputs ``parameterization``'s quantity, seen as an ε-model ``(x_t, t) -> ε̂``.

    An ``nn.Module`` network becomes a submodule, so ``.eval()`` and ``.to()`` reach it.
    """

    def __init__(self, s: NoiseSchedule, model: EpsModel, parameterization: str):
        super().__init__()
        self.s, self.model, self.parameterization = s, model, check_parameterization(parameterization)

    def forward(self, xt: Tensor, t: Tensor) -> Tensor:
        return eps_from_output(self.s, self.parameterization, xt, t, call_eps_model(self.model, xt, t))


def as_eps_model(s: NoiseSchedule, model: EpsModel, parameterization: str = "eps") -> EpsModel:
    """``model`` itself for "eps"; otherwise an :class:`AsEpsModel` that converts its output to ε."""
    return model if check_parameterization(parameterization) == "eps" else AsEpsModel(s, model, parameterization)
