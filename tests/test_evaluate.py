"""Evaluation: bits/dim, the rate–distortion curve (§4.3), noise-prediction metrics, Fréchet distances, KID, FID.

Statistical checks hold within Z = 5 standard errors for any seed; where a test makes K such checks,
the chance of a false failure is below K x 5.7e-7 (Bonferroni).
"""

import math
import sys
import types
import urllib.error

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

import ddpm
from ddpm import NoiseSchedule
from ddpm.classifier import (confidence_and_classes, digits_frechet_distance, frechet_reference_scale,
                             train_digits_classifier)
from ddpm.evaluate import (INCEPTION_WEIGHTS, bits_per_dim, fid, frechet_distance, frechet_distance_gaussian,
                           noise_prediction_metrics, rate_distortion)
from ddpm.likelihood import prior_bpd
from ddpm.losses import eps_mse_weight, variance_mismatch

Z = 5.0
GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1


def grid_images(gen, shape):
    return GRID[torch.randint(0, 256, shape, generator=gen)]


def zero_model(x, t):
    return torch.zeros_like(x)


# ----------------------------------------------------------------------------------------- bits/dim

@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_bits_per_dim_of_the_memorizing_oracle_is_its_closed_form(variance, gen):
    s = NoiseSchedule.linear()
    x_star = grid_images(gen, (3, 8, 8))
    oracle = ddpm.MemorizingOracle(s, x_star)
    prior, terms = oracle.vlb_bpd(variance)
    images = x_star.expand(5, -1, -1, -1)
    batches = [images[:2], (images[2:], torch.zeros(3))]  # an iterable of batches, one with labels
    result = bits_per_dim(s, oracle, batches, variance, batch_size=1024, generator=gen)
    assert result.num_images == 5
    assert result.total.mean == pytest.approx((prior + terms.sum()).item(), rel=1e-9)
    assert result.prior.mean == pytest.approx(prior.item(), rel=1e-9)
    assert result.diffusion.mean == pytest.approx(terms[1:].sum().item(), rel=1e-9, abs=1e-12)
    assert result.decoder.mean == pytest.approx(terms[0].item(), rel=1e-9)
    parts = result.prior.mean + result.diffusion.mean + result.decoder.mean
    assert parts == pytest.approx(result.total.mean, rel=1e-12)
    assert max(result.total.se, result.prior.se, result.diffusion.se, result.decoder.se) < 1e-9  # all equal


def test_bits_per_dim_is_the_mean_and_standard_error_of_vlb(seed):
    """One call of vlb on the same draws: the mean over images and std/sqrt(n), in eval mode without gradients."""
    s = NoiseSchedule.linear(T=40, beta_1=1e-3, beta_T=0.3)
    x0 = grid_images(torch.Generator().manual_seed(seed), (6, 1, 4, 4))
    seen = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = torch.nn.Dropout(0.5)

        def forward(self, x, t):
            seen.append((self.training, torch.is_grad_enabled()))
            return self.drop(0.1 * x)

    net = Net().train()
    result = bits_per_dim(s, net, x0, batch_size=500, generator=torch.Generator().manual_seed(seed))
    assert set(seen) == {(False, False)}
    assert net.training  # bits_per_dim restored the caller's mode
    bound = ddpm.vlb(s, net.eval(), x0, batch_size=500, generator=torch.Generator().manual_seed(seed))
    assert result.total.mean == pytest.approx(bound.total_bpd.mean().item(), rel=1e-12)
    assert result.total.se == pytest.approx(bound.total_bpd.std().item() / math.sqrt(6), rel=1e-9)
    assert result.decoder.mean == pytest.approx(bound.terms_bpd[:, 0].mean().item(), rel=1e-12)


def test_bits_per_dim_rejects_bad_data():
    s = NoiseSchedule.linear(T=10)
    with pytest.raises(ValueError, match="no images"):
        bits_per_dim(s, zero_model, [])
    with pytest.raises(ValueError, match="DataLoader"):
        bits_per_dim(s, zero_model, ddpm.get_dataset("digits", "test"))
    with pytest.raises(ValueError, match="float image batches"):
        bits_per_dim(s, zero_model, torch.zeros(4, 1, 8, 8, dtype=torch.uint8))


def test_paired_bits_per_dim_scores_every_model_on_the_same_draws(seed):
    """Each model's part equals bits_per_dim with the same seed, and the paired difference is the mean and
    standard error of the per-image differences of two vlb calls on identical draws."""
    s = NoiseSchedule.linear(T=40, beta_1=1e-3, beta_T=0.3)
    x0 = grid_images(torch.Generator().manual_seed(seed), (7, 1, 4, 4))
    models = {"a": lambda x, t: 0.1 * x, "b": lambda x, t: 0.3 * x.tanh(), "a again": lambda x, t: 0.1 * x}
    paired = ddpm.paired_bits_per_dim(s, models, x0, batch_size=3, seed=seed)
    bounds = {name: torch.cat([ddpm.vlb(s, m, x0[i:i + 3], batch_size=3, generator=g).total_bpd
                               for g in [torch.Generator().manual_seed(seed)] for i in range(0, 7, 3)])
              for name, m in models.items()}
    for name in models:
        alone = bits_per_dim(s, models[name], x0, batch_size=3, generator=torch.Generator().manual_seed(seed))
        assert paired.models[name].total.mean == pytest.approx(alone.total.mean, rel=1e-12)
    diff = bounds["a"] - bounds["b"]
    d = paired.difference("a", "b")
    assert d.mean == pytest.approx(diff.mean().item(), rel=1e-9)
    assert d.se == pytest.approx(diff.std().item() / math.sqrt(7), rel=1e-9)
    same = paired.difference("a", "a again")  # identical models on identical draws: exactly no difference
    assert same.mean == 0 and same.se == 0
    assert paired.difference("a", "b", "decoder").mean == pytest.approx(
        (paired.per_image[:, 0, 3] - paired.per_image[:, 1, 3]).mean().item())
    with pytest.raises(ValueError, match="no model named 'c'"):
        paired.difference("a", "c")


class _Bar:
    """Records what a progress bar was told: its total and how far it got."""

    made = []

    def __init__(self, iterable=None, total=None, **kwargs):
        self.iterable, self.total, self.n = iterable, total, 0
        _Bar.made.append(self)

    def __iter__(self):
        for x in self.iterable:
            self.n += 1
            yield x

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, k=1):
        self.n += k

    def close(self):
        pass


def test_progress_bars_know_their_total(monkeypatch):
    """Issue 8 item 11: the bars of bits_per_dim, rate_distortion and noise_prediction_metrics had no total."""
    import ddpm.evaluate as evaluate
    monkeypatch.setattr(evaluate, "tqdm", _Bar)
    s = NoiseSchedule.linear(T=5, beta_1=1e-3, beta_T=0.3)
    x0 = grid_images(torch.Generator().manual_seed(0), (5, 1, 2, 2))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x0), batch_size=2)
    for run in (lambda: bits_per_dim(s, zero_model, x0, batch_size=2, progress=True),
                lambda: bits_per_dim(s, zero_model, loader, batch_size=2, progress=True),
                lambda: ddpm.paired_bits_per_dim(s, {"zero": zero_model}, x0, batch_size=2, progress=True),
                lambda: ddpm.rate_distortion(s, zero_model, x0, batch_size=2, progress=True),
                lambda: ddpm.noise_prediction_metrics(s, zero_model, x0, batch_size=2, progress=True)):
        _Bar.made.clear()
        run()
        assert [(bar.total, bar.n) for bar in _Bar.made] == [(5, 5)]


# ----------------------------------------------------------------------------------------- rate-distortion

def test_rate_distortion_of_the_memorizing_oracle(gen):
    """x̂_0 = x* from every x_t: no distortion, and the rate is the cumulative closed-form bound."""
    s = NoiseSchedule.linear(T=200, beta_1=1e-4, beta_T=0.05)
    x_star = grid_images(gen, (3, 4, 4))
    oracle = ddpm.MemorizingOracle(s, x_star)
    prior, terms = oracle.vlb_bpd()
    curve = rate_distortion(s, oracle, x_star.expand(3, -1, -1, -1), batch_size=600, generator=gen)
    assert torch.equal(curve.t, torch.arange(200, 0, -1))
    assert curve.distortion_rmse.abs().max() < 1e-9
    expected = prior + torch.stack([terms[t:].sum() for t in range(1, 201)]).flip(0)  # T first
    assert torch.allclose(curve.rate_bpd, expected, rtol=1e-9, atol=1e-12)
    assert curve.rate_bpd[0] == pytest.approx(prior.item(), rel=1e-9)  # x_T alone costs L_T
    assert (curve.rate_bpd.diff() >= -1e-12).all()  # bits only accumulate
    assert curve.rate_bpd[-1] + terms[0] == pytest.approx((prior + terms.sum()).item(), rel=1e-9)
    some = rate_distortion(s, oracle, x_star[None], steps=[7, 200, 50, 1], generator=gen)
    assert some.t.tolist() == [200, 50, 7, 1]
    assert torch.allclose(some.rate_bpd, curve.rate_bpd[200 - some.t], rtol=1e-9)


def test_rate_distortion_of_the_zero_model(seed):
    """ε_θ = 0, no clipping: x̂_0 − x_0 = √((1 − ᾱ_t)/ᾱ_t) ε, so both curves have closed forms.

    Per image, RMSE/c_t is √(χ²_D/D) with mean m_D = √(2/D) Γ((D+1)/2)/Γ(D/2) and variance 1 − m_D²;
    each L_(t-1) is the variance mismatch plus w_t χ²_D/D with w_t the weight of Eq. 12.
    """
    s = NoiseSchedule.linear(T=50, beta_1=1e-3, beta_T=0.3)
    n, D = 300, 16
    x0 = grid_images(torch.Generator().manual_seed(seed), (n, 1, 4, 4))
    curve = rate_distortion(s, zero_model, x0, clip_denoised=False, batch_size=5000,
                            generator=torch.Generator().manual_seed(seed))
    t = curve.t
    c = 127.5 * ((1 - s.alpha_bars[t]) / s.alpha_bars[t]).sqrt()
    m = math.sqrt(2 / D) * math.exp(math.lgamma((D + 1) / 2) - math.lgamma(D / 2))
    assert ((curve.distortion_rmse - c * m).abs() <= Z * c * math.sqrt((1 - m * m) / n)).all()

    j = torch.arange(2, 51)
    per_term = (variance_mismatch(s, j) + eps_mse_weight(s, j)) / math.log(2)
    var_term = eps_mse_weight(s, j) ** 2 * 2 / D / math.log(2) ** 2
    # rate at t sums the terms of j = t+1..T; column k of the cumulative sums below is t = T - k
    after = torch.cat([torch.zeros(1, dtype=torch.float64), per_term.flip(0).cumsum(0)])
    after_var = torch.cat([torch.zeros(1, dtype=torch.float64), var_term.flip(0).cumsum(0)])
    expected = prior_bpd(s, x0).mean() + after
    assert ((curve.rate_bpd - expected).abs() <= Z * (after_var / n).sqrt() + 1e-9).all()
    assert (curve.rate_bpd.diff() >= 0).all()

    clipped = rate_distortion(s, zero_model, x0, clip_denoised=True, batch_size=5000,
                              generator=torch.Generator().manual_seed(seed))  # the same draws
    assert (clipped.distortion_rmse <= curve.distortion_rmse + 1e-9).all()
    assert clipped.distortion_rmse[0] < 0.5 * curve.distortion_rmse[0]


# ----------------------------------------------------------------------------------------- noise prediction

def test_noise_prediction_metrics_of_the_gaussian_oracle(gen):
    """For x_0 ~ N(μ, s²), ε − E[ε | x_t] ~ N(0, m_t) with m_t = ᾱ_t s²/(ᾱ_t s² + 1 − ᾱ_t) per dimension."""
    s = NoiseSchedule.linear(T=100, beta_1=1e-3, beta_T=0.2)
    data = ddpm.GaussianData(s, mean=0.3, std=0.5)
    n, D = 2000, 8
    steps = [1, 5, 20, 50, 100]
    out = noise_prediction_metrics(s, data, data.sample((n, D), generator=gen), steps, batch_size=4096,
                                   generator=gen)
    assert out["t"].tolist() == steps
    ab = s.alpha_bars[steps]
    m = ab * 0.25 / (ab * 0.25 + 1 - ab)
    assert ((out["mse"] - m).abs() <= Z * out["mse_se"]).all()
    assert torch.allclose(out["rmse"], out["mse"].sqrt())
    assert ((out["mae"] - (2 * m / math.pi).sqrt()).abs() <= Z * out["mae_se"]).all()
    # E Σ(ε − ε̄)² = (nD − 1) per t, E Σ(ε − ε_θ)² = nD m
    assert ((out["r2"] - (1 - m * n * D / (n * D - 1))).abs() <= Z * out["r2_se"]).all()


def test_noise_prediction_metrics_of_a_perfect_model(gen):
    s = NoiseSchedule.linear(T=100)
    x_star = grid_images(gen, (1, 4, 4))
    out = noise_prediction_metrics(s, ddpm.MemorizingOracle(s, x_star), x_star.expand(8, -1, -1, -1),
                                   generator=gen)
    assert len(out["t"]) == 50 and out["t"][0] == 1 and out["t"][-1] == 100
    assert out["mse"].max() < 1e-20 and out["mae"].max() < 1e-9
    assert (out["r2"] > 1 - 1e-12).all()


# ----------------------------------------------------------------------------------------- Fréchet distance

def random_spd(d, gen):
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_gaussian_closed_forms(gen):
    mu_a, mu_b, sd_a, sd_b = torch.randn(4, generator=gen, dtype=torch.float64).tolist()
    sd_a, sd_b = abs(sd_a) + 0.1, abs(sd_b) + 0.1
    assert frechet_distance_gaussian([mu_a], [[sd_a**2]], [mu_b], [[sd_b**2]]) == pytest.approx(
        (mu_a - mu_b) ** 2 + (sd_a - sd_b) ** 2, rel=1e-10)
    mean_a, mean_b = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    var_a, var_b = torch.rand(2, 5, generator=gen, dtype=torch.float64) + 0.1
    diagonal = ((mean_a - mean_b) ** 2).sum() + ((var_a.sqrt() - var_b.sqrt()) ** 2).sum()
    assert frechet_distance_gaussian(mean_a, var_a.diag(), mean_b, var_b.diag()) == pytest.approx(
        diagonal.item(), rel=1e-10)
    cov_a, cov_b = random_spd(6, gen), random_spd(6, gen)  # general, non-commuting: against scipy's sqrtm
    root = scipy.linalg.sqrtm((cov_a @ cov_b).numpy()).real
    general = (torch.trace(cov_a) + torch.trace(cov_b) - 2 * float(root.trace())).item()
    assert frechet_distance_gaussian(torch.zeros(6), cov_a, torch.zeros(6), cov_b) == pytest.approx(general, rel=1e-8)
    assert frechet_distance_gaussian(mean_a, cov_a[:5, :5], mean_a, cov_a[:5, :5]) < 1e-9
    with pytest.raises(ValueError, match="5x5"):
        frechet_distance_gaussian(mean_a, cov_a, mean_b, cov_b)


def exact_sample(n, mean, std, gen):
    """n points whose sample mean is ``mean`` and whose unbiased sample covariance is diag(std²), exactly."""
    z = torch.randn(n, len(mean), generator=gen, dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T).reshape(len(mean), len(mean)))).T
    return mean + z * std


@pytest.mark.parametrize("d", [1, 4])
def test_frechet_distance_of_feature_sets_with_known_moments(d, gen):
    mean_a, mean_b = torch.randn(2, d, generator=gen, dtype=torch.float64)
    std_a, std_b = torch.rand(2, d, generator=gen, dtype=torch.float64) + 0.2
    a, b = exact_sample(50, mean_a, std_a, gen), exact_sample(80, mean_b, std_b, gen)
    expected = ((mean_a - mean_b) ** 2).sum() + ((std_a - std_b) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected.item(), rel=1e-9)
    assert frechet_distance(a.float().numpy(), b.float().numpy()) == pytest.approx(expected.item(), rel=1e-4)
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(a[:1], b)


# ----------------------------------------------------------------------------------------- kernel distance

def kid_by_pairs(a, b):
    """The unbiased MMD² with the cubic kernel, pair by pair in NumPy: independent of ddpm.evaluate.kid."""
    a, b = a.numpy(), b.numpy()
    d = a.shape[1]

    def k(x, y):
        return (float(np.dot(x, y)) / d + 1) ** 3

    m, n = len(a), len(b)
    within_a = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    within_b = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    across = sum(k(x, y) for x in a for y in b) / (m * n)
    return within_a + within_b - 2 * across


def test_kid_is_the_unbiased_mmd2_of_the_cubic_kernel_and_its_jackknife_error(gen):
    a = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(9, 3, generator=gen, dtype=torch.float64) + 0.5
    est = ddpm.kid(a, b)
    assert est.mean == pytest.approx(kid_by_pairs(a, b), rel=1e-12, abs=1e-12)
    # the two-sample jackknife, by recomputing the statistic without each point in turn
    drop_a = np.array([kid_by_pairs(a[torch.arange(7) != i], b) for i in range(7)])
    drop_b = np.array([kid_by_pairs(a, b[torch.arange(9) != j]) for j in range(9)])
    var = 6 / 7 * ((drop_a - drop_a.mean()) ** 2).sum() + 8 / 9 * ((drop_b - drop_b.mean()) ** 2).sum()
    assert est.se == pytest.approx(math.sqrt(var), rel=1e-9)
    assert ddpm.kid(a.float().numpy(), b.float().numpy()).mean == pytest.approx(est.mean, rel=1e-5)
    with pytest.raises(ValueError, match="N >= 3"):
        ddpm.kid(a[:2], b)
    with pytest.raises(ValueError, match="different dimensions"):
        ddpm.kid(a, b[:, :2])


def kid_repeats(gen, shift: float, repeats: int = 400):
    values, errors = [], []
    for _ in range(repeats):
        est = ddpm.kid(torch.randn(40, 4, generator=gen, dtype=torch.float64),
                       torch.randn(50, 4, generator=gen, dtype=torch.float64) + shift)
        values.append(est.mean)
        errors.append(est.se)
    return torch.tensor(values), torch.tensor(errors)


def test_kid_is_unbiased_and_its_standard_error_matches_its_spread(gen):
    """400 pairs of sets. From one distribution the estimates average 0 within Z standard errors of that
    mean, and the jackknife errs on the safe side: the statistic is degenerate there (its first-order term
    vanishes), and the mean SE reads 1.32 x the spread (seed 1). From shifted ones the mean SE is the spread
    (1.00) within 20%; the spread's own SE is about 4%."""
    values, errors = kid_repeats(gen, 0.0)
    assert abs(values.mean()) < Z * values.std() / math.sqrt(len(values))
    assert 1.0 < errors.mean() / values.std() < 1.6
    values, errors = kid_repeats(gen, 0.5)
    assert 0.8 < errors.mean() / values.std() < 1.2


def test_kid_difference_of_paired_sets_and_its_jackknife_error(gen):
    a1 = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    a2 = a1 + 0.3 * torch.randn(6, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(8, 3, generator=gen, dtype=torch.float64) + 0.5
    est = ddpm.kid_difference(a1, a2, b)
    assert est.mean == pytest.approx(kid_by_pairs(a1, b) - kid_by_pairs(a2, b), rel=1e-12, abs=1e-12)
    keep_a, keep_b = (lambda i: torch.arange(6) != i), (lambda j: torch.arange(8) != j)
    drop_a = np.array([kid_by_pairs(a1[keep_a(i)], b) - kid_by_pairs(a2[keep_a(i)], b) for i in range(6)])
    drop_b = np.array([kid_by_pairs(a1, b[keep_b(j)]) - kid_by_pairs(a2, b[keep_b(j)]) for j in range(8)])
    var = 5 / 6 * ((drop_a - drop_a.mean()) ** 2).sum() + 7 / 8 * ((drop_b - drop_b.mean()) ** 2).sum()
    assert est.se == pytest.approx(math.sqrt(var), rel=1e-9)
    with pytest.raises(ValueError, match="same shape"):
        ddpm.kid_difference(a1, a2[:5], b)


def test_kid_difference_standard_error_matches_its_spread_for_paired_sets(gen):
    """300 triples: a2 is a1 moved a little, as a sampler with more steps moves the samples of one x_T.
    The mean SE matches the differences' spread within 20% (measured 0.91 to 0.99 over seeds 1-5), and is
    about a quarter of the unpaired errors combined (0.24)."""
    diffs, errors, unpaired = [], [], []
    for _ in range(300):
        a1 = torch.randn(40, 4, generator=gen, dtype=torch.float64) + 0.5
        a2 = a1 + 0.2 * torch.randn(40, 4, generator=gen, dtype=torch.float64) - 0.1
        b = torch.randn(50, 4, generator=gen, dtype=torch.float64)
        est = ddpm.kid_difference(a1, a2, b)
        diffs.append(est.mean)
        errors.append(est.se)
        unpaired.append(math.hypot(ddpm.kid(a1, b).se, ddpm.kid(a2, b).se))
    diffs, errors, unpaired = torch.tensor(diffs), torch.tensor(errors), torch.tensor(unpaired)
    assert 0.8 < errors.mean() / diffs.std() < 1.2
    assert errors.mean() < unpaired.mean() / 2


def test_kid_detects_a_shift_that_a_same_distribution_pair_does_not_show(gen):
    a, same = torch.randn(2, 200, 8, generator=gen, dtype=torch.float64)
    shifted = torch.randn(200, 8, generator=gen, dtype=torch.float64) + 0.5
    null, moved = ddpm.kid(a, same), ddpm.kid(a, shifted)
    assert abs(null.mean) < Z * null.se
    assert moved.mean > Z * moved.se


# ----------------------------------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def classifier():
    return train_digits_classifier(image_size=8, seed=0)


def test_digits_classifier_accuracy(classifier):
    """Deterministic given the seed: seed 0 reaches 98.9% on the 359 held-out digits here."""
    assert classifier.test_accuracy > 0.95


def test_classifier_training_is_deterministic_and_leaves_global_state_alone():
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    a, b = (train_digits_classifier(seed=3, steps=5) for _ in range(2))
    c = train_digits_classifier(seed=4, steps=5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.head.weight, c.head.weight)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads


def test_frechet_scale_separates_real_digits_from_noise(classifier, seed):
    """Halves of the test set are far closer to each other than to noise (10x or more on 30 seeds; we ask 4x)."""
    scale = frechet_reference_scale(classifier, seed=seed)
    assert scale.num_images == 179
    assert 0 < scale.real_vs_real < min(scale.real_vs_uniform_noise, scale.real_vs_gaussian_noise) / 4
    real = ddpm.digits("test")
    assert digits_frechet_distance(real, real, classifier) < 1e-6
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        digits_frechet_distance(ddpm.digits("test", image_size=16), real, classifier)


def test_confidence_and_classes_against_scipy_and_one_class_sets(classifier):
    x, labels = ddpm.digits("test", return_labels=True)
    confidence, classes = confidence_and_classes(classifier, x, batch_size=7)
    with torch.no_grad():
        p = torch.softmax(classifier(x).double(), 1)
    counts = torch.bincount(p.argmax(1), minlength=10).numpy()
    assert confidence == pytest.approx(p.max(1).values.mean().item(), rel=1e-9)
    assert classes == pytest.approx(math.exp(scipy.stats.entropy(counts)), rel=1e-9)
    assert 9 < classes <= 10 and confidence > 0.9        # the test split holds all ten digits, ~36 each
    threes = confidence_and_classes(classifier, x[labels == 3])[1]
    assert 1 <= threes < 1.5                              # one digit: about one class (98.9% accuracy)


# ----------------------------------------------------------------------------------------- FID

def fake_torchmetrics(monkeypatch, metric_class):
    """Stand-ins for torchmetrics.image.fid in sys.modules, so that no test imports the real one or the network."""
    for name in ("torchmetrics", "torchmetrics.image", "torchmetrics.image.fid"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["torchmetrics.image.fid"].FrechetInceptionDistance = metric_class


def test_fid_without_torchmetrics_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # makes the import fail
    with pytest.raises(ImportError, match=r'pip install "torchmetrics\[image\]"'):
        fid(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))


def test_fid_without_torch_fidelity_says_what_to_install(monkeypatch):
    class Metric:
        def __init__(self, **kwargs):
            raise ModuleNotFoundError("FrechetInceptionDistance metric requires that `Torch-fidelity` is installed.")

    fake_torchmetrics(monkeypatch, Metric)
    with pytest.raises(ImportError, match="torch-fidelity"):
        fid(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))


def test_fid_offline_says_where_to_put_the_weights(monkeypatch, tmp_path):
    class Metric:
        def __init__(self, feature_extractor_weights_path=None, **kwargs):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    fake_torchmetrics(monkeypatch, Metric)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(RuntimeError, match="could not fetch") as info:
        fid(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    message = str(info.value)
    assert "weights_path=" in message and str(tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS) in message
    with pytest.raises(FileNotFoundError, match="no Inception weights file"):
        fid(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), weights_path=tmp_path / "missing.pth")


def test_fid_feeds_uint8_reference_as_real_and_samples_as_fake(monkeypatch, tmp_path):
    calls = []

    class Metric:
        def __init__(self, feature=None, normalize=None, feature_extractor_weights_path=None):
            calls.append(("init", feature, normalize, feature_extractor_weights_path))

        def to(self, device):
            return self

        def update(self, imgs, real):
            calls.append(("update", imgs.dtype, imgs.shape[0], real, int(imgs.max())))

        def compute(self):
            return torch.tensor(12.5)

    fake_torchmetrics(monkeypatch, Metric)
    weights = tmp_path / INCEPTION_WEIGHTS
    weights.write_bytes(b"stand-in")
    value = fid(torch.ones(5, 3, 8, 8), [torch.zeros(3, 3, 8, 8)], device="cpu", batch_size=4, weights_path=weights)
    assert value == 12.5
    assert calls == [("init", 2048, False, str(weights)), ("update", torch.uint8, 3, True, 128),
                     ("update", torch.uint8, 4, False, 255), ("update", torch.uint8, 1, False, 255)]
    with pytest.raises(ValueError, match="RGB"):
        fid(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), device="cpu", weights_path=weights)


def test_fid_with_torchmetrics_installed_offline_and_with_local_weights(monkeypatch, tmp_path):
    """Runs only where torchmetrics[image] is installed; random weights stand in for Inception's (no network)."""
    pytest.importorskip("torchmetrics")
    inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(inception, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="could not fetch"):
        fid(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), device="cpu")
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    network = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    g = torch.Generator().manual_seed(0)
    for p in network.parameters():  # He-normal convolutions, so that the features do not vanish with depth
        if p.dim() == 4:
            p.data = torch.randn(p.shape, generator=g) * math.sqrt(2 / p[0].numel())
    weights = tmp_path / INCEPTION_WEIGHTS
    torch.save(network.state_dict(), weights)
    monkeypatch.undo()
    x, y = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1, torch.rand(6, 3, 16, 16, generator=g) * 0.2 - 1
    assert fid(x, x, device="cpu", weights_path=weights) < 1e-3
    assert fid(x, y, device="cpu", weights_path=weights) > 1e-3
