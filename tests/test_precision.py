"""bf16 is for the network's convolutions only: the math (the bound, the oracles, the evaluation) stays in
float32/float64 whatever the training precision, and a bf16-trained model is as good as an fp32 one."""

import pytest
import torch

import ddpm

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def s():
    return ddpm.NoiseSchedule.linear(T=1000, beta_1=1e-4, beta_T=0.02)


def test_the_bound_of_an_oracle_is_float64_and_unchanged_inside_a_bf16_block(s, gen):
    oracle = ddpm.GaussianData(s, mean=0.1, std=0.5)
    x0 = ddpm.digits("test")[:4].double()
    state = gen.get_state()
    outside = ddpm.vlb(s, oracle, x0, generator=gen)
    gen.set_state(state)
    with torch.autocast(**BF16):
        inside = ddpm.vlb(s, oracle, x0, generator=gen)
    assert inside.total_bpd.dtype == inside.terms_bpd.dtype == torch.float64
    assert torch.equal(inside.total_bpd, outside.total_bpd)


def test_evaluation_of_a_network_ignores_a_callers_bf16_block(s, seed):
    torch.manual_seed(seed)
    net = ddpm.UNet.preset("tiny", in_channels=1, image_size=8).eval()
    with torch.no_grad():  # the output layer starts at zero (as in the original): give it weights
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x0 = ddpm.digits("test")[:8]

    def evaluate():
        bpd = ddpm.bits_per_dim(s, net, x0, batch_size=2000, clip_denoised=False,
                                generator=torch.Generator().manual_seed(seed))
        metrics = ddpm.noise_prediction_metrics(s, net, x0, timesteps=[1, 500, 1000],
                                                generator=torch.Generator().manual_seed(seed))
        return bpd.total.mean, metrics["mse"]

    bpd, mse = evaluate()
    with torch.autocast(**BF16):
        bpd_inside, mse_inside = evaluate()
    assert bpd_inside == bpd and torch.equal(mse_inside, mse)  # the network ran in float32 both times
    assert mse.dtype == torch.float64


def test_the_training_losses_are_float32_when_the_network_runs_in_bf16(s, gen):
    net = ddpm.UNet.preset("tiny", in_channels=1, image_size=8)
    x0 = ddpm.digits("train")[:16]
    t = torch.randint(1, s.T + 1, (16,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    with torch.autocast(**BF16):
        assert net(x0, t).dtype == torch.bfloat16  # the convolutions do run in bf16 here
        simple = ddpm.l_simple(s, net, x0, t, noise)
        bound = ddpm.l_vlb(s, net, x0, t, noise)
    assert simple.dtype == torch.float32 and bound.dtype in (torch.float32, torch.float64)
