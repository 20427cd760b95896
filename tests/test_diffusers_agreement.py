"""Agreement with a peer implementation: diffusers' DDPMScheduler (a test dependency only).

diffusers counts timesteps from 0, so its timestep k is the paper's t = k + 1. It computes ᾱ as a float32
cumulative product of 1000 factors, whose rounding (measured: 4e-7 relative for the linear schedule, 1.3e-5
for the cosine one; the worst case is T·2^-24 ≈ 6e-5) dominates the differences, so we compare at
ATOL = 6e-5 times the size of the values involved.
"""

import pytest
import torch

import ddpm
from ddpm import NoiseSchedule

diffusers = pytest.importorskip("diffusers")

ATOL = 6e-5
SCHEDULES = {"linear": NoiseSchedule.linear(), "squaredcos_cap_v2": NoiseSchedule.cosine(1000)}
T_CHECK = [1, 2, 3, 10, 100, 500, 999, 1000]


def scheduler(name, variance_type="fixed_small"):
    return diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, beta_start=1e-4, beta_end=0.02,
                                   clip_sample=True, variance_type=variance_type)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_and_q_sample(name, gen):
    ours, theirs = SCHEDULES[name], scheduler(name)
    assert torch.allclose(theirs.betas.double(), ours.betas[1:], rtol=1e-6)
    x0 = torch.rand(len(T_CHECK), 3, 8, 8, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.tensor(T_CHECK)
    expected = theirs.add_noise(x0, noise, t - 1)
    scale = expected.abs().max()
    assert torch.allclose(ddpm.q_sample(ours, x0, t, noise), expected, rtol=0, atol=ATOL * scale)


def _step_both(name, variance, t, gen, x0_target):
    """One ancestral step of each, with a model whose x̂_0 lies inside [-1, 1] (so clipping is inert)."""
    ours = SCHEDULES[name]
    theirs = scheduler(name, {"fixedlarge": "fixed_large", "fixedsmall": "fixed_small"}[variance])
    xt = ddpm.q_sample(ours, x0_target, t, torch.randn(x0_target.shape, generator=gen))
    eps = ddpm.predict_eps_from_x0(ours, xt, t, x0_target)
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    theirs_prev = theirs.step(eps, t - 1, xt, generator=torch.Generator().manual_seed(seed)).prev_sample
    noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(seed))  # diffusers draws the same
    ours_prev, _ = ddpm.p_sample(ours, lambda x, tt: eps, xt, t, noise, variance)
    return ours_prev, theirs_prev, xt, eps, noise


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
@pytest.mark.parametrize("t", T_CHECK)
def test_one_ancestral_step(name, variance, t, gen):
    """Both against the same step in float64. Ours stays within float32 rounding (1e-6); diffusers also forms
    1 - ᾱ_t in float32, which near t = 1 cancels to a relative error of 2^-24 / (1 - ᾱ_t) (measured at t = 2:
    5e-5 against ours 9e-8), so its bound adds that term."""
    x0 = (torch.rand(4, 3, 8, 8, generator=gen) * 1.8 - 0.9)
    ours, theirs, xt, eps, noise = _step_both(name, variance, t, gen, x0)
    s = SCHEDULES[name]
    scale = max(1.0, xt.abs().max().item())
    ref, _ = ddpm.p_sample(s, lambda x, tt: eps.double(), xt.double(), t, noise.double(), variance)
    # x̂_0 = (x_t − √(1−ᾱ) ε)/√ᾱ amplifies rounding by √(1/ᾱ_t) (1e5 at the cosine schedule's t = T), and it
    # enters the mean through coef1: the condition number of this step
    condition = 1 + s.posterior_mean_coef1[t].item() * (1 / s.alpha_bars[t].item()) ** 0.5
    assert torch.allclose(ours.double(), ref, rtol=0, atol=1e-6 * scale * condition)
    bound = ATOL * condition + 2.0 ** -24 / (1 - s.alpha_bars[t].item())
    assert torch.allclose(theirs.double(), ref, rtol=0, atol=bound * scale)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("t", [2, 10, 500, 1000])
def test_posterior_mean_and_variance(name, t, gen):
    """Two steps from the same x_t with different noise give diffusers' mean and standard deviation."""
    ours_s, theirs = SCHEDULES[name], scheduler(name)
    x0 = torch.rand(2, 64, generator=gen) * 1.8 - 0.9
    xt = ddpm.q_sample(ours_s, x0, t, torch.randn(x0.shape, generator=gen))
    eps = ddpm.predict_eps_from_x0(ours_s, xt, t, x0)
    outs, noises = [], []
    for seed in (1, 2):
        outs.append(theirs.step(eps, t - 1, xt, generator=torch.Generator().manual_seed(seed)).prev_sample)
        noises.append(torch.randn(xt.shape, generator=torch.Generator().manual_seed(seed)))
    std = ((outs[0] - outs[1]) / (noises[0] - noises[1])).median()
    mean = outs[0] - std * noises[0]
    our_mean, our_var = ddpm.q_posterior(ours_s, x0, xt, t)
    assert torch.allclose(mean, our_mean, rtol=0, atol=ATOL * max(1.0, xt.abs().max().item()))
    assert std.item() ** 2 == pytest.approx(our_var.item(), rel=1e-3)  # a ratio of float32 differences


def random_tiny_unet(gen, **changes):
    """The tiny preset (the original's padding and t − 1) on 3x8x8 images, every weight drawn at random, the
    output layer's 5 times larger, so that the output is O(1) (0.4-0.9 RMS)."""
    model = ddpm.UNet.preset("tiny", in_channels=3, image_size=8, dropout=0.0, **changes).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((0.5 if name.startswith("conv_out") else 0.1) * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_an_exported_v_network_takes_diffusers_ancestral_step(name, variance, tmp_path, gen):
    """A network that outputs v, exported (prediction_type="v_prediction"): diffusers' DDPMPipeline runs its
    UNet2DModel at k = t − 1 and one DDPMScheduler.step, ddpm.load(folder) one p_sample at the paper's t, with
    the same noise; x̂_0 and x_(t−1) are compared. They differ by the two networks' float32 rounding (1e-5 of the
    output's scale, test_pretrained.py), which reaches x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v̂ and the mean with
    coefficients ≤ 1, and by diffusers' float32 ᾱ (the bound of test_one_ancestral_step, whose condition is
    1 + c1 here: v's x̂_0 divides by nothing). Measured over 3 seeds: at most 0.2 of the bound (x_(t−1) at t = 3,
    5e-5 of the scale), 1e-3-1e-2 of it elsewhere. Read as ε instead, the same output gives an x̂_0 150-9600
    times the bound away from t = 100 on (we require 20; at small t, v ≈ ε and the two readings agree)."""
    s = SCHEDULES[name]
    folder = ddpm.save_pretrained(random_tiny_unet(gen), tmp_path / "v", s, variance, parameterization="v")
    pipe = diffusers.DDPMPipeline.from_pretrained(folder)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    loaded = ddpm.load(folder)
    assert loaded.parameterization == "v" and loaded.variance == variance
    for t in T_CHECK:
        x0 = torch.rand(4, 3, 8, 8, generator=gen) * 1.8 - 0.9
        xt = ddpm.q_sample(s, x0, t, torch.randn(x0.shape, generator=gen))
        seed = int(torch.randint(0, 2**31, (1,), generator=gen))
        with torch.no_grad():
            v = pipe.unet(xt, torch.full((4,), t - 1)).sample
            theirs = pipe.scheduler.step(v, t - 1, xt, generator=torch.Generator().manual_seed(seed))
            noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(seed))  # diffusers draws the same
            ours, ours_x0 = ddpm.p_sample(s, loaded.model, xt, t, noise, variance)
            as_eps_x0 = ddpm.p_mean_variance(s, loaded.network, xt, t, variance).pred_x0
        scale = max(1.0, xt.abs().max().item(), v.abs().max().item())
        float32_ab = ATOL + 2.0 ** -24 / (1 - s.alpha_bars[t].item())
        bound = 1e-5 + ATOL * s.posterior_mean_coef1[t].item() + float32_ab
        gaps = [(a - b).abs().max().item() / scale for a, b in
                ((ours, theirs.prev_sample), (ours_x0, theirs.pred_original_sample))]
        assert max(gaps) <= bound, (t, gaps, bound)
        if t >= 100:
            assert (as_eps_x0 - theirs.pred_original_sample).abs().max().item() / scale > 20 * bound, t


def test_an_exported_class_conditional_network_is_diffusers_class_conditional_unet(tmp_path, gen):
    """UNet(num_classes=K) is written as UNet2DModel(num_class_embeds=K + 1), label K the null class, its label
    vectors as class_embedding: diffusers, given class_labels, computes at k = t − 1 what ddpm computes at t (to
    the float32 rounding of test_pretrained.py, 1e-5 of the scale) for real classes and the null class, which
    ddpm's y=None means. Moving each label by one changes the output by far more, so the labels are compared."""
    model = random_tiny_unet(gen, num_classes=3)
    folder = ddpm.save_pretrained(model, tmp_path / "conditional", NoiseSchedule.linear(), "fixedlarge")
    twin = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    assert twin.config.num_class_embeds == 4 and twin.class_embedding.weight.shape == (4, 128)
    x, t = torch.randn(8, 3, 8, 8, generator=gen), torch.tensor([1, 2, 10, 100, 500, 999, 1000, 7])
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    with torch.no_grad():
        ours, theirs = model(x, t, y), twin(x, t - 1, class_labels=y).sample
        null, theirs_null = model(x, t), twin(x, t - 1, class_labels=torch.full((8,), 3)).sample
        shifted = model(x, t, (y + 1) % 4)
    scale = ours.abs().max()
    assert (ours - theirs).abs().max() <= 1e-5 * scale and (null - theirs_null).abs().max() <= 1e-5 * scale
    assert (ours - shifted).abs().max() > 1e-2 * scale
