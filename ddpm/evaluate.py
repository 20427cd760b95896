"""Evaluating an ε-model (Ho et al. 2020, §4): bits/dim, the rate–distortion curve of §4.3,
noise-prediction metrics over t, and sample quality by Fréchet distances (Heusel et al. 2017) and the
kernel distance (KID, Bińkowski et al. 2018).

Each function takes the held-out images as a tensor [N, ...] or an iterable of batches (a DataLoader;
a batch (images, labels) counts by its images), runs the model without gradients and, for an
``nn.Module``, in eval mode (its mode is restored afterwards).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .levels import to_uint8
from .forward import q_sample
from .likelihood import vlb
from .posterior import predict_x0_from_eps
from .reverse import EpsModel, call_eps_model
from .schedule import NoiseSchedule

PIXEL_SCALE = 127.5  # one unit of the model's range [-1, 1] is 127.5 levels of [0, 255]


class Estimate(NamedTuple):
    """An estimate (a mean over images, or a statistic such as KID) and its standard error."""

    mean: float
    se: float

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.se:.4f}"


def _estimate(x: Tensor) -> Estimate:
    n = x.numel()
    return Estimate(x.mean().item(), x.std().item() / math.sqrt(n) if n > 1 else math.nan)


@contextmanager
def inference(model):
    """No gradients, no autocast (the bound is scored in float32/float64 even inside a caller's bf16
    block) and, for an nn.Module, eval mode (dropout off) until the block ends."""
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        with torch.no_grad(), torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            yield
    finally:
        if was_training:
            model.train()


def batches(data, batch_size: int, device=None):
    """Float image tensors of at most ``batch_size`` images, from a tensor [N, ...] or an iterable of batches."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        raise ValueError("pass a tensor [N, ...] or batches, not a Dataset of single images: wrap it in "
                         "torch.utils.data.DataLoader(dataset, batch_size=...)")
    for batch in [data] if isinstance(data, Tensor) else data:
        batch = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not (isinstance(batch, Tensor) and batch.is_floating_point() and batch.dim() >= 2):
            raise ValueError("expected float image batches of shape [B, ...] in [-1, 1], got "
                             + (f"{batch.dtype} of shape {tuple(batch.shape)}" if isinstance(batch, Tensor)
                                else type(batch).__name__))
        for chunk in batch.split(batch_size):
            yield chunk if device is None else chunk.to(device)


def _num_images(data):
    """How many images ``data`` holds, when it says: a tensor, or a DataLoader over a sized data set."""
    if isinstance(data, Tensor):
        return data.shape[0]
    try:
        return len(data.dataset)
    except (AttributeError, TypeError):
        return None


def progress_batches(data, batch_size: int, device, desc: str, progress: bool):
    """:func:`batches`, counted by a progress bar in images out of their total."""
    with tqdm(total=_num_images(data), desc=desc, unit="image", disable=not progress, leave=False) as bar:
        for chunk in batches(data, batch_size, device):
            yield chunk
            bar.update(len(chunk))


def _per_t(s: NoiseSchedule, eps_model: EpsModel, x0: Tensor, ts: Tensor, batch_size: int, generator,
           stat) -> Tensor:
    """``stat(x_0, x_t, t, ε, ε̂)`` for a fresh x_t ~ q(x_t | x_0) (Eq. 4) at each t in ``ts`` and each image.

    Returns float64 [len(ts), B, k], on the CPU.
    """
    B = x0.shape[0]
    out = []
    for group in ts.split(max(1, batch_size // B)):
        t = group.to(x0.device).repeat_interleave(B)
        x = x0.repeat(len(group), *([1] * (x0.dim() - 1)))
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        xt = q_sample(s, x, t, noise)
        out.append(stat(x, xt, t, noise, call_eps_model(eps_model, xt, t)).double().reshape(len(group), B, -1))
    return torch.cat(out).cpu()


# ----------------------------------------------------------------------------------------- bits/dim

@dataclass(frozen=True)
class BitsPerDim:
    """The bound of Eq. 5 on held-out images in bits/dim: each part's mean over images ± its standard error."""

    total: Estimate      # L_T + Σ_(t=2..T) L_(t-1) + L_0
    prior: Estimate      # L_T
    diffusion: Estimate  # Σ_(t=2..T) L_(t-1)
    decoder: Estimate    # L_0
    num_images: int

    def __str__(self) -> str:
        return (f"{self.total} bits/dim on {self.num_images} images "
                f"(L_T {self.prior}, sum of L_(t-1) {self.diffusion}, L_0 {self.decoder})")


def _bound_parts(b) -> Tensor:
    """[B, 4]: each image's total, L_T, Σ_(t≥2) L_(t-1) and L_0 from a :class:`ddpm.VLB`, on the CPU."""
    return torch.stack([b.total_bpd, b.prior_bpd, b.terms_bpd[:, 1:].sum(1), b.terms_bpd[:, 0]], 1).cpu()


def _summary(parts: Tensor) -> BitsPerDim:
    return BitsPerDim(*(_estimate(parts[:, i]) for i in range(4)), num_images=len(parts))


def bits_per_dim(s: NoiseSchedule, eps_model: EpsModel, data, variance: str = "fixedlarge", batch_size: int = 256,
                 generator=None, progress: bool = False, device=None, clip_denoised: bool = True) -> BitsPerDim:
    """The negative log-likelihood bound of Eq. 5 on ``data`` (images on the 256-level grid), by :func:`ddpm.vlb`.

    One draw x_t ~ q(x_t | x_0) per term and image; ``batch_size`` bounds both the images per call of
    ``vlb`` and the (image, t) pairs per model call.
    """
    parts = []
    with inference(eps_model):
        for x0 in progress_batches(data, batch_size, device, "bits/dim", progress):
            parts.append(_bound_parts(vlb(s, eps_model, x0, variance, clip_denoised, batch_size=batch_size,
                                          generator=generator)))
    if not parts:
        raise ValueError("bits_per_dim got no images")
    return _summary(torch.cat(parts))


_PARTS = ("total", "prior", "diffusion", "decoder")


@dataclass(frozen=True)
class PairedBitsPerDim:
    """Bits/dim of several models scored on the same images with the same x_t draws (common random numbers)."""

    models: dict[str, BitsPerDim]  # each model's own estimate, as :func:`bits_per_dim` gives it
    per_image: Tensor              # [N, M, 4]: each image's total, L_T, Σ L_(t-1), L_0 under each model

    def difference(self, a: str, b: str, part: str = "total") -> Estimate:
        """The mean over images of model a's bound minus model b's, with the standard error of the paired
        differences: far smaller than the two separate errors combined when the models agree on which
        images are costly."""
        names = list(self.models)
        for name in (a, b):
            if name not in names:
                raise ValueError(f"no model named {name!r}; the models are {names}")
        if part not in _PARTS:
            raise ValueError(f"part must be one of {_PARTS}, got {part!r}")
        k = _PARTS.index(part)
        return _estimate(self.per_image[:, names.index(a), k] - self.per_image[:, names.index(b), k])


def paired_bits_per_dim(s: NoiseSchedule, eps_models, data, variance: str = "fixedlarge", batch_size: int = 256,
                        seed: int = 0, progress: bool = False, device=None,
                        clip_denoised: bool = True) -> PairedBitsPerDim:
    """:func:`bits_per_dim` of each model of the mapping ``eps_models`` (name → ε-model), every model
    scored on the same images with the same t and noise (the x_t of each term drawn from ``seed``), so
    that differences between models are measured without the noise of separate draws.
    """
    names = list(eps_models)
    if not names:
        raise ValueError("paired_bits_per_dim needs at least one model in eps_models")
    parts, gen = [], None
    for x0 in progress_batches(data, batch_size, device, "bits/dim", progress):
        if gen is None:
            gen = torch.Generator(x0.device).manual_seed(seed)
        state, row = gen.get_state(), []
        for name in names:
            gen.set_state(state)  # the same draws for every model
            with inference(eps_models[name]):
                row.append(_bound_parts(vlb(s, eps_models[name], x0, variance, clip_denoised,
                                            batch_size=batch_size, generator=gen)))
        parts.append(torch.stack(row, 1))
    if not parts:
        raise ValueError("paired_bits_per_dim got no images")
    per_image = torch.cat(parts)
    return PairedBitsPerDim({name: _summary(per_image[:, i]) for i, name in enumerate(names)}, per_image)


# ----------------------------------------------------------------------------------------- rate-distortion

class RateDistortion(NamedTuple):
    t: Tensor                # the timesteps, T first (the order in which the receiver gets them)
    rate_bpd: Tensor         # bits/dim received once x_t is known: L_T + Σ_(s=t+1..T) L_(s-1)
    distortion_rmse: Tensor  # mean over images of √(‖x_0 − x̂_0(x_t, t)‖²/D), on the [0, 255] scale


def rate_distortion(s: NoiseSchedule, eps_model: EpsModel, x0, variance: str = "fixedlarge", steps=None,
                    clip_denoised: bool = True, batch_size: int = 256, generator=None, progress: bool = False,
                    device=None) -> RateDistortion:
    """The progressive-coding curve of §4.3 (Algorithm 3, Fig. 5), averaged over the images of ``x0``.

    The sender transmits x_T with p(x_T), then each x_(t-1) ~ q(x_(t-1) | x_t, x_0) with p_θ(x_(t-1) | x_t).
    Once the receiver holds x_t it has received the rate L_T + Σ_(s=t+1..T) L_(s-1) bits/dim (the terms of
    :func:`ddpm.vlb`, one draw each), and it estimates x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ(x_t, t))/√ᾱ_t (Eq. 15,
    clipped to [-1, 1] when ``clip_denoised``). The x_t so received is marginally a draw of q(x_t | x_0)
    (Eq. 4), so the distortion at t is measured on a fresh such draw: the RMSE √(‖x_0 − x̂_0‖²/D) of each
    image, times 127.5 for the [0, 255] scale, averaged over images. At t = 1 the rate is the paper's
    "rate" L_1 + … + L_T (its L_T being our prior term); sending x_0 costs L_0 more and leaves no distortion.
    ``steps``: the t to report (default: all, T down to 1).
    """
    ts = torch.arange(s.T, 0, -1) if steps is None else torch.unique(s.check_t(steps).flatten()).flip(0)
    if ts.numel() == 0:
        raise ValueError("steps is empty; give timesteps in {1, ..., T} or None for all of them")

    def squared_error(x, xt, t, noise, eps):
        x0_hat = predict_x0_from_eps(s, xt, t, eps)
        x0_hat = x0_hat.clamp(-1, 1) if clip_denoised else x0_hat
        return ((x - x0_hat) ** 2).flatten(1).mean(1)

    rates, distortions = [], []
    with inference(eps_model):
        for x in progress_batches(x0, batch_size, device, "rate-distortion", progress):
            b = vlb(s, eps_model, x, variance, clip_denoised, batch_size=batch_size, generator=generator)
            after = b.terms_bpd.flip(1).cumsum(1).flip(1)  # column k: Σ_(j ≥ k) L_j
            received = b.prior_bpd[:, None] + torch.cat([after[:, 1:], after.new_zeros(len(x), 1)], 1)
            rates.append(received[:, ts - 1].cpu())  # column t-1: L_T + Σ_(j ≥ t) L_j
            mse = _per_t(s, eps_model, x, ts, batch_size, generator, squared_error)[..., 0]
            distortions.append(PIXEL_SCALE * mse.sqrt().T)
    if not rates:
        raise ValueError("rate_distortion got no images")
    return RateDistortion(ts, torch.cat(rates).mean(0), torch.cat(distortions).mean(0))


# ----------------------------------------------------------------------------------------- noise prediction

def noise_prediction_metrics(s: NoiseSchedule, eps_model: EpsModel, x0, timesteps=None, batch_size: int = 256,
                             generator=None, progress: bool = False, device=None) -> dict[str, Tensor]:
    """How well ε_θ(x_t, t) predicts the ε of x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Eq. 4), at each t of ``timesteps``.

    Each image gets a fresh ε ~ N(0, I) at each t. Pooled over images and dimensions at each t:
    "mse" = mean (ε_θ − ε)² (the summand of L_simple, Eq. 14), "rmse" = √mse, "mae" = mean |ε_θ − ε|,
    and "r2" = 1 − Σ(ε − ε_θ)² / Σ(ε − ε̄)², the coefficient of determination of ε_θ as a predictor of ε,
    where ε̄ is the mean of the drawn noise at that t (ε has unit variance, so r2 ≈ 1 − mse: 0 for
    ε_θ = 0, 1 for a perfect model). "mse_se", "mae_se" and "r2_se" are standard errors over images
    (r2's by the delta method). Values are float64 tensors over "t" (default: 50 steps evenly spaced in 1..T).
    """
    ts = (torch.linspace(1, s.T, min(s.T, 50)).round().long() if timesteps is None
          else s.check_t(timesteps).flatten())
    if ts.numel() == 0:
        raise ValueError("timesteps is empty; give timesteps in {1, ..., T} or None for the default")

    def sums(x, xt, t, noise, eps):
        err, noise = (eps - noise).flatten(1).double(), noise.flatten(1).double()
        return torch.stack([(err ** 2).sum(1), err.abs().sum(1), noise.sum(1), (noise ** 2).sum(1)], 1)

    parts, dims = [], 1
    with inference(eps_model):
        for x in progress_batches(x0, batch_size, device, "noise metrics", progress):
            dims = x[0].numel()
            parts.append(_per_t(s, eps_model, x, ts, batch_size, generator, sums))
    if not parts:
        raise ValueError("noise_prediction_metrics got no images")
    res, err_abs, total, total_sq = torch.cat(parts, 1).unbind(-1)  # each [len(ts), N], summed over dimensions
    n = res.shape[1]
    noise_mean = total.sum(1, keepdim=True) / (n * dims)
    ss_tot = total_sq - 2 * noise_mean * total + dims * noise_mean ** 2  # Σ_d (ε − ε̄)² of each image
    ratio = res.sum(1) / ss_tot.sum(1)
    mse, mae = res / dims, err_abs / dims

    def se(v):
        return v.std(1) / math.sqrt(n) if n > 1 else torch.full((len(ts),), math.nan, dtype=torch.float64)

    return {"t": ts, "mse": mse.mean(1), "mse_se": se(mse), "rmse": mse.mean(1).sqrt(), "mae": mae.mean(1),
            "mae_se": se(mae), "r2": 1 - ratio, "r2_se": se(res - ratio[:, None] * ss_tot) / ss_tot.mean(1)}


# ----------------------------------------------------------------------------------------- Fréchet distances

def _sqrt_psd(c: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(c)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance_gaussian(mean_a, cov_a, mean_b, cov_b) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^(1/2)), the squared Fréchet (2-Wasserstein) distance
    between N(μ_a, Σ_a) and N(μ_b, Σ_b) (the formula of FID, Heusel et al. 2017), in float64.

    Tr (Σ_a Σ_b)^(1/2) is computed as Σ √λ over the eigenvalues λ of the symmetric Σ_a^(1/2) Σ_b Σ_a^(1/2)
    (similar to Σ_a Σ_b), so no complex or ill-conditioned matrix square root appears.
    """
    mean_a, mean_b = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mean_a, mean_b))
    d = mean_a.numel()
    covs = [torch.as_tensor(c, dtype=torch.float64) for c in (cov_a, cov_b)]
    for name, c in zip(("cov_a", "cov_b"), covs):
        if c.numel() != d * d:
            raise ValueError(f"{name} must be a {d}x{d} matrix to match the means, got shape {tuple(c.shape)}")
    if mean_b.numel() != d:
        raise ValueError(f"the means have different lengths, {d} and {mean_b.numel()}")
    cov_a, cov_b = (0.5 * (c.reshape(d, d) + c.reshape(d, d).T) for c in covs)
    root_a = _sqrt_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    value = ((mean_a - mean_b) ** 2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross
    return max(value.item(), 0.0)  # rounding can leave −1e-12 where the distributions agree


def frechet_distance(features_a, features_b) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets [N_a, D] and [N_b, D]
    (sample means and unbiased covariances), as :func:`frechet_distance_gaussian`."""
    fitted = []
    for name, f in (("features_a", features_a), ("features_b", features_b)):
        f = torch.as_tensor(f, dtype=torch.float64)
        f = f[:, None] if f.dim() == 1 else f
        if f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"{name} must be [N, D] with N >= 2 samples, got shape {tuple(f.shape)}")
        fitted += [f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])]
    if fitted[0].numel() != fitted[2].numel():
        raise ValueError(f"the feature sets have different dimensions, {fitted[0].numel()} and {fitted[2].numel()}")
    return frechet_distance_gaussian(*fitted)


# ----------------------------------------------------------------------------------------- kernel distance

def _features(name: str, f) -> Tensor:
    f = torch.as_tensor(f, dtype=torch.float64)
    f = f[:, None] if f.dim() == 1 else f
    if f.dim() != 2 or f.shape[0] < 3:
        raise ValueError(f"{name} must be [N, D] with N >= 3 samples, got shape {tuple(f.shape)}")
    return f


def _kid_jackknife(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The unbiased MMD² of the cubic kernel, and its values without each a_i and without each b_j in turn
    (from row sums: no recomputation)."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the feature sets have different dimensions, {a.shape[1]} and {b.shape[1]}")
    d, m, n = a.shape[1], len(a), len(b)
    k_aa, k_bb, k_ab = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    r_aa, r_bb = k_aa.sum(1) - k_aa.diag(), k_bb.sum(1) - k_bb.diag()   # row sums over j ≠ i
    s_aa, s_bb, c_a, c_b = r_aa.sum(), r_bb.sum(), k_ab.sum(1), k_ab.sum(0)
    s_ab = c_a.sum()
    value = s_aa / (m * (m - 1)) + s_bb / (n * (n - 1)) - 2 * s_ab / (m * n)
    drop_a = ((s_aa - 2 * r_aa) / ((m - 1) * (m - 2)) + s_bb / (n * (n - 1))
              - 2 * (s_ab - c_a) / ((m - 1) * n))
    drop_b = (s_aa / (m * (m - 1)) + (s_bb - 2 * r_bb) / ((n - 1) * (n - 2))
              - 2 * (s_ab - c_b) / (m * (n - 1)))
    return value, drop_a, drop_b


def _jackknife_se(drop_a: Tensor, drop_b: Tensor) -> float:
    """The two-sample jackknife: (m−1)/m Σ_i (θ_(−i) − θ̄)² + (n−1)/n Σ_j (θ_(−j) − θ̄)², square-rooted."""
    m, n = len(drop_a), len(drop_b)
    var = (m - 1) / m * ((drop_a - drop_a.mean()) ** 2).sum() + (n - 1) / n * ((drop_b - drop_b.mean()) ** 2).sum()
    return var.sqrt().item()


def kid(features_a, features_b) -> Estimate:
    """The kernel inception distance (Bińkowski et al. 2018): the unbiased estimate of MMD² between two
    feature sets [m, D] and [n, D] with the cubic kernel k(x, y) = (xᵀy / D + 1)³ over all pairs,

        mean_{i≠j} k(a_i, a_j) + mean_{i≠j} k(b_i, b_j) − 2 mean_{i,j} k(a_i, b_j),

    and its standard error by the two-sample jackknife (leave one a_i out, then one b_j). Unbiased: its
    mean is 0 when both sets come from one distribution, so, unlike the Fréchet distance of a few hundred
    images, it can be negative and small sets can be compared. There the jackknife errs high on average (the
    statistic is degenerate), but the ratio of the estimate to it has a long lower tail (below −4 in 0.1% of
    random halvings of the held-out digits: benchmarks/KID_NULL.md); between different distributions it matches
    the estimate's spread.
    """
    a, b = _features("features_a", features_a), _features("features_b", features_b)
    value, drop_a, drop_b = _kid_jackknife(a, b)
    return Estimate(value.item(), _jackknife_se(drop_a, drop_b))


def kid_difference(features_a1, features_a2, features_b) -> Estimate:
    """KID(a1, b) − KID(a2, b) for two paired sets (row i of a1 and of a2 share something, such as the
    starting noise of two samplers) against one reference set b, with its jackknife standard error: row i
    is left out of both sets at once, so what the pair shares cancels, and b's own term cancels exactly."""
    a1, a2 = _features("features_a1", features_a1), _features("features_a2", features_a2)
    if a1.shape != a2.shape:
        raise ValueError(f"paired feature sets must have the same shape, got {tuple(a1.shape)} and {tuple(a2.shape)}")
    b = _features("features_b", features_b)
    (v1, da1, db1), (v2, da2, db2) = _kid_jackknife(a1, b), _kid_jackknife(a2, b)
    return Estimate((v1 - v2).item(), _jackknife_se(da1 - da2, db1 - db2))


# ----------------------------------------------------------------------------------------- FID

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS
_INSTALL_FID = ('FID needs torchmetrics with torch-fidelity, which ddpm does not install by default: '
                'pip install "torchmetrics[image]"')


def _get_weights() -> str:
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    return (f"Offline, download {INCEPTION_URL} on a machine with internet access and either put it at "
            f"{cached} (torch.hub's cache, where it is looked for first) or pass weights_path=<that file>.")


def fid(samples, reference, device=None, batch_size: int = 64, weights_path=None, progress: bool = False) -> float:
    """The Fréchet Inception Distance (Heusel et al. 2017) between RGB images [N, 3, H, W] in [-1, 1].

    Images are rounded to uint8 (as saved images are) and scored by torchmetrics' FrechetInceptionDistance:
    torch-fidelity's port of the TensorFlow Inception network of the original FID, 2048 pool features.
    The weights (about 92 MB) are fetched from ``INCEPTION_URL`` into torch.hub's cache on first use,
    unless ``weights_path`` names a local copy. FID falls as the number of images grows; Ho et al. (2020)
    compare 50,000 samples with the training set.
    """
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as e:
        raise ImportError(_INSTALL_FID) from e
    if weights_path is not None and not Path(weights_path).expanduser().is_file():
        raise FileNotFoundError(f"no Inception weights file at {weights_path}. " + _get_weights())
    path = None if weights_path is None else str(Path(weights_path).expanduser())
    try:
        metric = FrechetInceptionDistance(feature=2048, normalize=False, feature_extractor_weights_path=path)
    except ModuleNotFoundError as e:  # torchmetrics without torch-fidelity
        raise ImportError(_INSTALL_FID) from e
    except (OSError, RuntimeError) as e:  # no network (URLError is an OSError), or a broken file
        what = "fetch" if path is None else f"load from {path}"
        raise RuntimeError(f"could not {what} the Inception weights for FID ({type(e).__name__}: {e}). "
                           + _get_weights()) from e
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    metric = metric.to(device)
    with torch.no_grad():
        for real, images in ((True, reference), (False, samples)):
            for x in progress_batches(images, batch_size, None, "FID", progress):
                if x.dim() != 4 or x.shape[1] != 3:
                    raise ValueError(f"FID takes RGB images [N, 3, H, W], got a batch of shape {tuple(x.shape)}; "
                                     "for digits use ddpm.classifier.digits_frechet_distance")
                metric.update(to_uint8(x).to(device), real=real)
    return float(metric.compute())
