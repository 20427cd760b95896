"""What the network outputs: ε ("eps", Ho et al. 2020, Eq. 11), the posterior mean μ̃_t ("mu", Eq. 7), x_0
("x0", Eq. 15; §3.2 and Table 2 compare the three) or v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 ("v", Salimans & Ho 2022,
"Progressive distillation", §4 and Appendix D). All four describe the same reverse step, so ``as_eps_model``
turns any of them into an ε-model for sampling and the bound; the reverse step takes a μ̃-network's output as its
mean, as the original does.
"""

from __future__ import annotations

from torch import Tensor, nn

from .posterior import predict_eps_from_x0, predict_x0_from_eps, q_posterior
from .reverse import EpsModel, Prediction, call_eps_model, math_dtype, timesteps_like
from .schedule import NoiseSchedule, extract

PARAMETERIZATIONS = ("eps", "mu", "x0", "v")


def check_parameterization(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS} (what the network outputs), "
                         f"got {parameterization!r}")
    return parameterization


def target(s: NoiseSchedule, parameterization: str, x0: Tensor, xt: Tensor, t, noise: Tensor) -> Tensor:
    """What a perfect network of this parameterization outputs at x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε:
    ε, μ̃_t(x_t, x_0) (Eq. 7), x_0 or v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022, §4). The unweighted
    MSE against it is Table 2's ‖ε − ε_θ‖² (L_simple), ‖μ̃ − μ_θ‖², or ‖v − v_θ‖²."""
    if check_parameterization(parameterization) == "eps":
        return noise
    if parameterization == "v":
        return extract(s.sqrt_alpha_bars, t, x0) * noise - extract(s.sqrt_one_minus_alpha_bars, t, x0) * x0
    return x0 if parameterization == "x0" else q_posterior(s, x0, xt, t)[0]


def prediction_from_output(s: NoiseSchedule, parameterization: str, xt: Tensor, t, output: Tensor) -> Prediction:
    """ε̂, x̂_0 and, for "mu", μ_θ that the network's ``output`` stands for: x̂_0 is the output for "x0", Eq. 7
    inverted for "mu" and Eq. 15 for "eps"; ε̂ is Eq. 4 solved for ε. Computed in at least float32: μ̃'s x_0 part,
    c1 x_0, falls below a bf16 output's rounding from t ≈ 436 of the linear schedule on.

    For "v", with a = √ᾱ_t and b = √(1 − ᾱ_t), a² + b² = 1: Eq. 4 and the definition of v (Salimans & Ho 2022,
    §4 and Appendix D) are a rotation of (x_0, ε) by the angle φ_t = arctan(b / a),

        x_t = a x_0 + b ε,    v = a ε − b x_0,

    whose inverse is its transpose: a x_t − b v = (a² + b²) x_0 = x_0 and b x_t + a v = (b² + a²) ε = ε, so

        x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v̂,    ε̂ = √(1 − ᾱ_t) x_t + √ᾱ_t v̂,

    at every t, with no division (Eq. 15 multiplies ε̂'s error by √((1 − ᾱ_t)/ᾱ_t), 2e4 at the cosine schedule's
    t = T)."""
    check_parameterization(parameterization)
    dtype = math_dtype(output, xt)
    output, xt, t = output.to(dtype), xt.to(dtype), timesteps_like(s, t, xt)
    if parameterization == "eps":
        return Prediction(output, predict_x0_from_eps(s, xt, t, output), None)
    if parameterization == "v":
        a, b = extract(s.sqrt_alpha_bars, t, xt), extract(s.sqrt_one_minus_alpha_bars, t, xt)
        return Prediction(b * xt + a * output, a * xt - b * output, None)
    x0 = output
    if parameterization == "mu":  # μ̃ = c1 x_0 + c2 x_t, with c1 > 0 for every t ≥ 1
        x0 = (output - extract(s.posterior_mean_coef2, t, xt) * xt) / extract(s.posterior_mean_coef1, t, xt)
    return Prediction(predict_eps_from_x0(s, xt, t, x0), x0, output if parameterization == "mu" else None)


def eps_from_output(s: NoiseSchedule, parameterization: str, xt: Tensor, t, output: Tensor) -> Tensor:
    """The ε that the network's ``output`` stands for (:func:`prediction_from_output`); "eps" is the output."""
    if check_parameterization(parameterization) == "eps":
        return output
    return prediction_from_output(s, parameterization, xt, t, output).eps


class AsEpsModel(nn.Module):
    """A network that outputs ``parameterization``'s quantity, seen as an ε-model ``(x_t, t) -> ε̂``.

    An ``nn.Module`` network becomes a submodule, so ``.eval()`` and ``.to()`` reach it. The reverse step
    reads :meth:`prediction`, so that a μ̃-network's output is its mean μ_θ, whatever the clipping of x̂_0
    (the original's "xprev"); ``.variance`` is the network's own, if it has one.
    """

    def __init__(self, s: NoiseSchedule, model: EpsModel, parameterization: str):
        super().__init__()
        self.s, self.model, self.parameterization = s, model, check_parameterization(parameterization)

    @property
    def variance(self) -> str | None:
        return getattr(self.model, "variance", None)

    def forward(self, xt: Tensor, t: Tensor) -> Tensor:
        return eps_from_output(self.s, self.parameterization, xt, t, call_eps_model(self.model, xt, t))

    def prediction(self, xt: Tensor, t: Tensor, *, bf16: bool = False) -> Prediction:
        """ε̂, x̂_0 and μ_θ of :func:`prediction_from_output`; ``bf16``: see :func:`ddpm.reverse.call_eps_model`."""
        output = call_eps_model(self.model, xt, t, bf16=bf16)
        return prediction_from_output(self.s, self.parameterization, xt, t, output)


def as_eps_model(s: NoiseSchedule, model: EpsModel, parameterization: str = "eps") -> EpsModel:
    """``model`` itself for "eps"; otherwise an :class:`AsEpsModel` that converts its output to ε."""
    return model if check_parameterization(parameterization) == "eps" else AsEpsModel(s, model, parameterization)
