"""Classifier-free guidance (Ho & Salimans 2022): one network learns ε_θ(x_t, t, y) and, with its label dropped
to the null class ∅ in training, ε_θ(x_t, t); sampling with their Eq. 6,

    ε̃_θ(x_t, t, y) = (1 + w) ε_θ(x_t, t, y) − w ε_θ(x_t, t, ∅),

trades diversity for fidelity to the class as w grows. With ε = −√(1 − ᾱ_t) ∇ log p(x_t), ε̃ belongs to
p(x_t | y)^(1+w) / p(x_t)^w ∝ p(x_t) p(y | x_t)^(1+w): the unconditional score plus (1 + w) times the gradient
of an implicit classifier, where classifier guidance (Dhariwal & Nichol 2021) trains one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .parameterization import check_parameterization, eps_from_output
from .reverse import EpsModel, math_dtype
from .schedule import NoiseSchedule


class ClassifierFreeGuidance(nn.Module):
    """The guided ε-model ``(x_t, t) -> ε̃`` of a class-conditional network (Eq. 6), for every sampler and the
    bound. An ``nn.Module`` network becomes a submodule, so ``.eval()`` and ``.to()`` reach it; ``.variance`` is
    the network's own, if it has one (as for :class:`ddpm.parameterization.AsEpsModel`)."""

    def __init__(self, model, y, w: float, schedule: NoiseSchedule | None = None, parameterization: str = "eps"):
        super().__init__()
        K = getattr(model, "num_classes", None)
        if not isinstance(K, int):
            raise ValueError("classifier-free guidance needs a class-conditional network, one with .num_classes "
                             "(ddpm.UNet(..., num_classes=K), or ddpm.load(...).network of a --class-conditional run)")
        if check_parameterization(parameterization) != "eps" and schedule is None:
            raise ValueError(f"a network that outputs {parameterization!r} needs schedule= (its NoiseSchedule) to "
                             "turn its outputs into ε before they are mixed")
        w = float(w)
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"the guidance weight w must be a finite number >= 0 (0: the conditional model alone), "
                             f"got {w}")
        if isinstance(y, Tensor):
            if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
                raise ValueError(f"y must be an int or an integer tensor [B] of labels, got a {y.dtype} tensor of "
                                 f"shape {tuple(y.shape)}")
            bad = y[(y < 0) | (y > K)].unique().tolist()
        elif isinstance(y, int) and not isinstance(y, bool):
            bad = [] if 0 <= y <= K else [y]
        else:
            raise ValueError(f"y must be an int (one class for the whole batch) or a long tensor [B], got "
                             f"{type(y).__name__}")
        if bad:
            raise ValueError(f"labels must lie in 0..{K - 1} (or {K}, the null class); got {bad[:5]}")
        self.model, self.y, self.w, self.num_classes = model, y, w, K
        self.s, self.parameterization = schedule, parameterization

    @property
    def variance(self) -> str | None:
        return getattr(self.model, "variance", None)

    def labels(self, xt: Tensor) -> Tensor:
        """y as a long tensor [B] on x_t's device."""
        if not isinstance(self.y, Tensor):
            return torch.full((len(xt),), self.y, dtype=torch.long, device=xt.device)
        if len(self.y) != len(xt):
            raise ValueError(f"y holds {len(self.y)} labels for a batch of {len(xt)} images; pass one label per "
                             "image, or an int for all")
        return self.y.to(xt.device, torch.long)

    def eps(self, xt: Tensor, t: Tensor, output: Tensor) -> Tensor:
        """The ε that the network's output stands for, in at least float32 (bf16 outputs are not mixed in bf16)."""
        return eps_from_output(self.s, self.parameterization, xt, t, output.to(math_dtype(output, xt)))

    def forward(self, xt: Tensor, t: Tensor) -> Tensor:
        """Eq. 6, with the conditional and the null rows in one network call of the doubled batch (w = 0: the
        conditional call alone)."""
        y = self.labels(xt)
        if self.w == 0:
            return self.eps(xt, t, self.model(xt, t, y))
        both = self.model(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.num_classes)]))
        conditional, unconditional = both.chunk(2)
        return (1 + self.w) * self.eps(xt, t, conditional) - self.w * self.eps(xt, t, unconditional)


def classifier_free_guidance(model, y, w: float, *, schedule: NoiseSchedule | None = None,
                             parameterization: str = "eps") -> EpsModel:
    """Eq. 6 of Ho & Salimans 2022: the ε-model (x_t, t) ↦ (1 + w) ε_θ(x_t, t, y) − w ε_θ(x_t, t, ∅) of a
    class-conditional ``model`` (called ``model(x, t, y)``, with ``.num_classes`` K; label K is the null class ∅).

    ``y``: an int, one class for the whole batch, or a long tensor [B], one per image (K there gives that image the
    unconditional model). ``w`` ≥ 0: 0 is the conditional model alone; larger w follows the class more closely.
    A network that outputs x_0, v or μ̃ (``parameterization``) needs its ``schedule``: each output becomes ε
    (:func:`ddpm.parameterization.eps_from_output`) before the two are mixed, as guidance is defined on ε.
    """
    return ClassifierFreeGuidance(model, y, w, schedule, parameterization)
