"""The paper's released checkpoints (ddpm/pretrained.py, UNet.from_pretrained), checked offline against diffusers.

The Hub's google/ddpm-* folders are rebuilt here from their published config files, with random weights:
diffusers' UNet2DModel writes them (save_pretrained), ddpm.UNet reads them, and the two networks must compute
the same function when diffusers is fed t − 1 and ddpm the paper's t. The other way, a folder that ddpm writes
(UNet.save_pretrained) must be read by diffusers as the same network, and writing must never leave a folder
half-written or holding two sets of weights. Nothing is downloaded.
"""

import ast
import inspect
import json
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

import ddpm
from ddpm import NoiseSchedule, UNet, pretrained

diffusers = pytest.importorskip("diffusers")

# unet/config.json of google/ddpm-cifar10-32, and of the seven 256x256 models (celebahq, church, bedroom, cat, and
# their -ema- twins share it), as the Hub holds them.
CIFAR10 = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"], "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}
LSUN_CELEBAHQ_256 = {
    **CIFAR10, "block_out_channels": [128, 128, 256, 256, 512, 512], "sample_size": 256,
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4}
# scheduler/scheduler_config.json: the paper's schedule; σ² = β for CIFAR10, β̃ for the 256x256 models.
SCHEDULER = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02,
             "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000,
             "trained_betas": None}
RELEASED = {"cifar10": (CIFAR10, "fixed_large", 35_746_307), "256": (LSUN_CELEBAHQ_256, "fixed_small", 113_673_219)}


def unet2d(config: dict):
    return diffusers.UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})


def narrow(config: dict, ch: int = 16, groups: int = 8, size: int | None = None) -> dict:
    """The same layout with ch channels at the top level (groups GroupNorm groups), for a fast CPU forward."""
    widths = [w * ch // config["block_out_channels"][0] for w in config["block_out_channels"]]
    return {**config, "block_out_channels": widths, "norm_num_groups": groups,
            "sample_size": size or config["sample_size"]}


def random_twin(config: dict, gen: torch.Generator):
    """UNet2DModel with every weight drawn at random (none left at zero), in eval mode."""
    twin = unet2d(config).eval()
    with torch.no_grad():
        for p in twin.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return twin


def random_unet(gen: torch.Generator, **changes) -> UNet:
    """The narrow CIFAR10 network as ddpm.UNet, every weight drawn at random, in eval mode."""
    model = UNet(**{**pretrained.unet_config(narrow(CIFAR10)), **changes}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def pipeline_folder(where, twin, variance: str, T: int = 1000, prediction_type: str = "epsilon"):
    """A Hub-like pipeline folder written by diffusers itself."""
    twin.save_pretrained(where / "unet")
    scheduler = diffusers.DDPMScheduler(**{**{k: v for k, v in SCHEDULER.items() if not k.startswith("_")},
                                           "num_train_timesteps": T, "variance_type": variance,
                                           "prediction_type": prediction_type})
    scheduler.save_pretrained(where / "scheduler")
    (where / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    return where


def outputs(ours, twin, gen, ts=(1, 2, 500, 999, 1000)):
    """ε̂ of both networks on one batch at each paper-t: ddpm given t, diffusers given t − 1."""
    x = torch.randn(2, twin.config.in_channels, twin.config.sample_size, twin.config.sample_size, generator=gen)
    with torch.no_grad():
        return [(ours(x, torch.full((2,), t)), twin(x, torch.full((2,), t - 1)).sample) for t in ts]


def assert_float32_equal(pairs):
    """Equal to float32 rounding: both networks run the same ~60 layers with other kernels and summation orders
    (SDPA against diffusers' attention), each rounding at ~1e-7 relative. We measured at most 6e-7 of the output's
    scale on these narrow networks (6 seeds), 6e-6 at CIFAR10's full width, and require 1e-5. An off-by-one t or
    the wrong padding moves outputs by more than 1e-3 of their scale."""
    for ours, theirs in pairs:
        scale = theirs.abs().max()
        assert scale > 1e-2
        assert (ours - theirs).abs().max() <= 1e-5 * scale, ((ours - theirs).abs().max() / scale).item()


# The real configurations ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", RELEASED)
def test_released_configurations_have_the_original_parameter_counts(layout):
    config, _, count = RELEASED[layout]
    with torch.device("meta"):
        theirs, ours = unet2d(config), UNet(**pretrained.unet_config(config))
    assert sum(p.numel() for p in theirs.parameters()) == ours.num_parameters() == count


@pytest.mark.parametrize("layout, preset", [("cifar10", "cifar10"), ("256", "celebahq256")])
def test_released_configurations_are_the_presets_with_tf_padding_and_t_shifted(layout, preset):
    """The presets are the released networks (dropout aside: the Hub configs describe inference, dropout 0)."""
    config = pretrained.unet_config(RELEASED[layout][0])
    with torch.device("meta"):
        expected = UNet.preset(preset, downsample_padding="tf_same", t_offset=1, dropout=0.0, out_channels=3)
    assert config == expected.config


# Same function as diffusers --------------------------------------------------------------------------------

@pytest.mark.parametrize("layout, size", [("cifar10", 32), ("256", 64)])
@pytest.mark.parametrize("bare", [False, True], ids=["pipeline", "unet-folder"])
def test_loaded_model_computes_what_diffusers_computes_at_the_papers_t(layout, size, bare, tmp_path, gen):
    """Narrow widths, and 64x64 inputs for the 256x256 layout (its six levels, attention at the fifth)."""
    config, variance, _ = RELEASED[layout]
    twin = random_twin(narrow(config, size=size), gen)
    folder = pipeline_folder(tmp_path, twin, variance)
    ours = UNet.from_pretrained(folder / "unet" if bare else folder)
    assert not ours.training and ours.t_offset == 1
    assert_float32_equal(outputs(ours, twin, gen))


def test_the_shift_and_the_padding_are_both_needed(tmp_path, gen):
    """The check above has power: without t − 1, or with symmetric padding, outputs differ far beyond 1e-5."""
    twin = random_twin(narrow(CIFAR10), gen)
    ours = UNet.from_pretrained(pipeline_folder(tmp_path, twin, "fixed_large"))
    for change in (dict(t_offset=0), dict(downsample_padding="symmetric")):
        other = UNet(**{**ours.config, **change}).eval()
        other.load_state_dict(ours.state_dict())
        gaps = [((a - b).abs().max() / b.abs().max()).item() for a, b in outputs(other, twin, gen, ts=(1, 500))]
        assert min(gaps) > 1e-3, (change, gaps)


@pytest.mark.parametrize("layout", RELEASED)
def test_old_attention_names_in_a_bin_file_load_as_the_new_ones(layout, tmp_path, gen):
    """The Hub's 2022 files name attention query, key, value, proj_attn (diffusers renames them on load)."""
    config, variance, _ = RELEASED[layout]
    twin = random_twin(narrow(config, size=32), gen)
    folder = pipeline_folder(tmp_path, twin, variance)
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for key, value in twin.state_dict().items():
        for new, previous in renames.items():
            key = key.replace(f".{new}.", f".{previous}.")
        old[key] = value
    assert sum(".query." in k for k in old) > 0
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(old, folder / "unet" / "diffusion_pytorch_model.bin")
    assert_float32_equal(outputs(UNet.from_pretrained(folder), twin, gen, ts=(1, 1000)))


@pytest.mark.parametrize("layout", RELEASED)
def test_the_scheduler_config_gives_the_schedule_and_the_variance(layout, tmp_path, gen):
    config, variance, _ = RELEASED[layout]
    folder = pipeline_folder(tmp_path, random_twin(narrow(config, size=32), gen), variance)
    model = UNet.from_pretrained(folder)
    expected = NoiseSchedule.linear(1000, 1e-4, 0.02)
    assert model.schedule.T == 1000 and torch.equal(model.schedule.betas, expected.betas)
    assert model.variance == {"fixed_large": "fixedlarge", "fixed_small": "fixedsmall"}[variance]
    theirs = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler").betas  # a float32 linspace
    torch.testing.assert_close(model.schedule.betas[1:].float(), theirs, rtol=2.4e-7, atol=0)  # 2 float32 ulps


def test_bound_and_sampler_take_the_loaded_model_with_the_papers_t(tmp_path, gen):
    """ddpm.vlb and ddpm.sample need no special case: the loaded model equals diffusers' network fed t − 1."""
    twin = random_twin(narrow(CIFAR10, ch=8, size=8), gen)
    model = UNet.from_pretrained(pipeline_folder(tmp_path, twin, "fixed_large", T=20))
    s, x0 = model.schedule, (torch.randint(0, 256, (2, 3, 8, 8), generator=gen) / 127.5 - 1)
    seed = int(torch.randint(2**31, (1,), generator=gen))

    def shifted(x, t):
        return twin(x, t - 1).sample

    with torch.no_grad():
        bounds = [ddpm.vlb(s, net, x0, model.variance, generator=torch.Generator().manual_seed(seed)).total_bpd
                  for net in (model, shifted)]
        samples = [ddpm.sample(s, net, (2, 3, 8, 8), model.variance, generator=torch.Generator().manual_seed(seed))
                   for net in (model, shifted)]
    torch.testing.assert_close(bounds[0], bounds[1], rtol=1e-5, atol=0)
    torch.testing.assert_close(samples[0], samples[1], rtol=0, atol=1e-4)


# The flat layout and the 2022 root files ---------------------------------------------------------------------

def test_a_flat_folder_keeps_its_scheduler(tmp_path, gen):
    """config.json, weights and scheduler_config.json side by side (google/ddpm-cat-256 today), written by
    diffusers itself: its T=20 and fixed_large, not DDPMScheduler's defaults (1000, fixed_small), come with it."""
    twin = random_twin(narrow(CIFAR10, ch=8, size=8), gen)
    twin.save_pretrained(tmp_path)
    diffusers.DDPMScheduler(num_train_timesteps=20, variance_type="fixed_large").save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "scheduler_config.json"}
    model = UNet.from_pretrained(tmp_path)
    assert model.schedule.T == 20 and model.variance == "fixedlarge"
    torch.testing.assert_close(model.schedule.betas, NoiseSchedule.linear(20, 1e-4, 0.02).betas, rtol=0, atol=0)
    assert_float32_equal(outputs(model, twin, gen, ts=(1, 20)))


def test_the_2022_gaussian_ddpm_scheduler_config_is_read(tmp_path, gen):
    """diffusers' first scheduler format (the Hub repositories' root scheduler_config.json): "timesteps" for
    num_train_timesteps, the same β and variance names."""
    random_twin(narrow(CIFAR10, ch=8, size=8), gen).save_pretrained(tmp_path)
    legacy = {"_class_name": "GaussianDDPMScheduler", "_diffusers_version": "0.0.1", "timesteps": 20,
              "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "variance_type": "fixed_large",
              "clip_predicted_image": True}
    (tmp_path / "scheduler_config.json").write_text(json.dumps(legacy))
    model = UNet.from_pretrained(tmp_path)
    assert model.schedule.T == 20 and model.variance == "fixedlarge"


def test_the_2022_unet_model_config_is_refused_saying_what_to_pass(tmp_path, gen):
    """diffusers' first model format (a root config.json of class UNetModel, other names, other keys) is not
    read; a pipeline folder that still holds those root files is read from unet/ and scheduler/."""
    legacy = {"_class_name": "UNetModel", "_diffusers_version": "0.0.1", "ch": 128, "ch_mult": [1, 2, 2, 2],
              "attn_resolutions": [16], "num_res_blocks": 2, "dropout": 0.1, "resolution": 32, "in_channels": 3,
              "out_ch": 3, "resamp_with_conv": True}
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match="UNetModel format.*pass the folder's unet/ subfolder or a newer "
                                         "revision") as error:
        UNet.from_pretrained(tmp_path)
    assert "\n" not in str(error.value)
    pipeline_folder(tmp_path, random_twin(narrow(CIFAR10, ch=8, size=8), gen), "fixed_large", T=20)
    model = UNet.from_pretrained(tmp_path)
    assert model.schedule.T == 20 and model.variance == "fixedlarge"


# What the config files may say -------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, ours", [(diffusers.UNet2DModel, pretrained.DIFFUSERS_DEFAULTS),
                                       (diffusers.DDPMScheduler, pretrained.SCHEDULER_DEFAULTS)])
def test_the_defaults_assumed_for_absent_keys_are_diffusers_own(cls, ours):
    """A key absent from config.json takes the default of diffusers' constructor; ours are a copy of them."""
    theirs = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    assert ours == theirs


def test_a_config_relying_on_diffusers_default_block_types_is_read():
    """No down_block_types / up_block_types: diffusers' four levels, attention at the three lower ones."""
    config = {k: v for k, v in CIFAR10.items() if not k.endswith("block_types")}
    assert pretrained.unet_config(config)["attn_resolutions"] == (16, 8, 4)
    with torch.device("meta"):
        assert UNet(**pretrained.unet_config(config)).num_parameters() == \
            sum(p.numel() for p in unet2d(config).parameters())


@pytest.mark.parametrize("change, message", [
    (dict(time_embedding_dim=256), "time_embedding_dim=256: .* 4 x block_out_channels\\[0\\] = 512"),
    (dict(mid_block_type=None), "differs from the DDPM network in \\{'mid_block_type': None\\}"),
    (dict(num_heads=4), r"keys UNet2DModel does not take, \['num_heads'\]"),
    (dict(_class_name="UNet2DConditionModel"), "describes a UNet2DConditionModel"),
    (dict(block_out_channels=[128, 256, 256]), "one \\(Attn\\)DownBlock2D level per block_out_channels entry"),
])
def test_unet_configs_that_change_the_network_are_refused_in_one_line(change, message):
    with pytest.raises(ValueError, match=message) as error:
        pretrained.unet_config({**CIFAR10, **change})
    assert "\n" not in str(error.value)


def test_time_embedding_dim_of_4_ch_is_the_ddpm_network():
    assert pretrained.unet_config({**CIFAR10, "time_embedding_dim": 512}) == pretrained.unet_config(CIFAR10)


@pytest.mark.parametrize("change, message", [
    (dict(rescale_betas_zero_snr=True), r"\{'rescale_betas_zero_snr': True\} change the paper's schedule"),
    (dict(thresholding=True), r"\{'thresholding': True\}"),
    (dict(clip_sample_range=2.0), r"\{'clip_sample_range': 2.0\}"),
    (dict(clip_sample=False), r"\{'clip_sample': False\}"),
    (dict(variance_type="learned_range"), "variance_type='learned_range'"),
    (dict(beta_schedule="scaled_linear"), "beta_schedule='scaled_linear'"),
    (dict(set_alpha_to_one=True), r"keys DDPMScheduler does not take, \['set_alpha_to_one'\]"),
])
def test_scheduler_settings_that_change_the_schedule_or_the_sampler_are_refused(change, message):
    with pytest.raises(ValueError, match=message) as error:
        pretrained.noise_schedule({**SCHEDULER, **change})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("config, expected", [
    (SCHEDULER, "eps"), ({**SCHEDULER, "prediction_type": "epsilon"}, "eps"),
    ({**SCHEDULER, "prediction_type": "sample"}, "x0"), ({**SCHEDULER, "prediction_type": "v_prediction"}, "v"),
    ({"_class_name": "GaussianDDPMScheduler", "timesteps": 20}, "eps"), ({}, "eps")])
def test_the_prediction_type_says_what_the_network_outputs(config, expected):
    assert pretrained.parameterization(config) == expected


def test_an_unknown_prediction_type_is_refused_in_one_line(tmp_path, gen):
    with pytest.raises(ValueError, match=r"prediction_type='flow': ddpm reads networks that predict the noise "
                                         r"\('epsilon'\), x_0 \('sample'\) or v \('v_prediction'\)") as error:
        pretrained.parameterization({**SCHEDULER, "prediction_type": "flow"})
    assert "\n" not in str(error.value)
    folder = pipeline_folder(tmp_path, random_twin(narrow(CIFAR10, ch=8, size=8), gen), "fixed_large", T=20)
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "flow"}))
    with pytest.raises(ValueError, match="prediction_type='flow'"):
        ddpm.load(folder)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_a_folder_of_an_x0_or_v_network_loads_as_its_eps_model(prediction_type, tmp_path, gen):
    """A folder that diffusers writes for a network predicting x_0 ("sample") or v ("v_prediction"): ddpm.load's
    ε-model is the ε that output stands for, written out here from ᾱ_t (Eq. 4; v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 gives
    ε = √(1 − ᾱ_t) x_t + √ᾱ_t v), to float32 rounding of the two networks: 1e-5 of the output's scale, as above,
    times the coefficient of the output in ε (√ᾱ_t for v, √(ᾱ_t/(1 − ᾱ_t)) for x_0, 41 at t = 2; measured at most
    1.1e-6 of that over 8 seeds)."""
    twin = random_twin(narrow(CIFAR10, ch=8, size=8), gen)
    loaded = ddpm.load(pipeline_folder(tmp_path, twin, "fixed_small", T=50, prediction_type=prediction_type))
    expected_p = {"sample": "x0", "v_prediction": "v"}[prediction_type]
    assert loaded.parameterization == loaded.network.parameterization == expected_p
    assert loaded.model is not loaded.network and loaded.variance == "fixedsmall" and loaded.schedule.T == 50
    x, t = torch.randn(4, 3, 8, 8, generator=gen), torch.tensor([2, 10, 49, 50])
    ab = loaded.schedule.alpha_bars[t].reshape(-1, 1, 1, 1)  # float64: 1 − ᾱ_2 = 6e-4 loses 4 digits in float32
    with torch.no_grad():
        out = twin(x, t - 1).sample.double()
        eps = loaded.model(x, t)
    x = x.double()
    if expected_p == "v":
        expected, coef = (1 - ab).sqrt() * x + ab.sqrt() * out, ab.sqrt()
    else:
        expected, coef = (x - ab.sqrt() * out) / (1 - ab).sqrt(), (ab / (1 - ab)).sqrt()
    assert (eps - expected).abs().max() <= 1e-5 * out.abs().max() * coef.max()
    assert (eps - out).abs().max() > 0.1  # the output itself is not the ε


@pytest.mark.parametrize("change", [dict(timestep_spacing="trailing"), dict(steps_offset=1),
                                    dict(dynamic_thresholding_ratio=0.9), dict(clip_sample_range=1.0),
                                    dict(variance_type="fixed_small_log"), dict(tensor_format="pt")])
def test_scheduler_settings_that_only_pick_fewer_steps_are_read(change):
    """timestep_spacing and steps_offset choose the steps of a shorter sampler, not the training-time t; the
    thresholding ratio matters only with thresholding; tensor_format is diffusers 0.1-0.3's array library."""
    schedule, variance = pretrained.noise_schedule({**SCHEDULER, **change})
    assert schedule.T == 1000 and variance == "fixedsmall"


def test_a_config_that_contradicts_its_weights_names_the_key_and_both_shapes(tmp_path, gen):
    """D2: block_out_channels [64, 128] for weights of widths 8 and 16 (it was a raw RuntimeError from reshape)."""
    folder = pipeline_folder(tmp_path, random_twin(narrow(CIFAR10, ch=8, size=8), gen), "fixed_large")
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "block_out_channels": [64, 128, 128, 128]}))
    with pytest.raises(ValueError, match=r"time_embedding.linear_1.weight has shape \(32, 8\) in the weights, "
                                         r"but config.json describes a network that needs \(256, 64\)") as error:
        UNet.from_pretrained(folder)
    assert "\n" not in str(error.value)


# Writing the layout ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_save_pretrained_writes_a_folder_diffusers_reads_as_the_same_network(safe, tmp_path, gen):
    model = UNet(**{**pretrained.unet_config(narrow(CIFAR10)), "dropout": 0.1}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    schedule = NoiseSchedule.linear(1000, 1e-4, 0.02)
    folder = pretrained.save_pretrained(model, tmp_path / "standin", schedule, "fixedlarge", safe_serialization=safe)
    twin = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    assert twin.config.dropout == 0.1
    assert_float32_equal(outputs(model, twin, gen, ts=(1, 1000)))
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    assert scheduler.config.variance_type == "fixed_large" and scheduler.config.num_train_timesteps == 1000
    torch.testing.assert_close(scheduler.betas, schedule.betas[1:].float(), rtol=2.4e-7, atol=0)
    again = UNet.from_pretrained(folder)
    assert again.config == model.config and again.variance == "fixedlarge"
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_a_class_conditional_network_round_trips_with_its_classes(tmp_path, gen):
    """num_classes=K is written as num_class_embeds=K + 1 and read back as K: the same weights, the same outputs
    for every label and the null class (bit for bit), and ddpm.load gives the null class's ε-model."""
    model = random_unet(gen, num_classes=5)
    folder = model.save_pretrained(tmp_path / "conditional", schedule=NoiseSchedule.linear(), variance="fixedlarge")
    assert json.loads((folder / "unet" / "config.json").read_text())["num_class_embeds"] == 6
    again = UNet.from_pretrained(folder)
    assert again.num_classes == 5 and again.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    x, t = torch.randn(6, 3, 32, 32, generator=gen), torch.tensor([1, 2, 10, 500, 999, 1000])
    with torch.no_grad():
        y = torch.arange(6)
        assert torch.equal(again(x, t, y), model(x, t, y)) and torch.equal(ddpm.load(folder).model(x, t), model(x, t))


def test_a_class_conditional_folder_written_by_diffusers_is_read(tmp_path, gen):
    config = {**narrow(CIFAR10), "num_class_embeds": 3}
    folder = pipeline_folder(tmp_path, random_twin(config, gen), "fixed_large")
    ours = UNet.from_pretrained(folder)
    assert ours.num_classes == 2
    twin = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    x, t, y = torch.randn(3, 3, 32, 32, generator=gen), torch.tensor([1, 500, 1000]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert_float32_equal([(ours(x, t, y), twin(x, t - 1, class_labels=y).sample)])


@pytest.mark.parametrize("classes", [1, 0, 2.5])
def test_fewer_than_two_class_embeddings_are_refused_in_one_line(classes):
    with pytest.raises(ValueError, match=rf"num_class_embeds={classes}: ddpm.UNet reads None \(no classes\) or "
                                         r"K \+ 1 >= 2") as error:
        pretrained.unet_config({**CIFAR10, "num_class_embeds": classes})
    assert "\n" not in str(error.value)


def test_a_schedule_other_than_linear_is_written_as_its_betas(tmp_path):
    model = UNet.preset("tiny", downsample_padding="tf_same", t_offset=1)
    s = NoiseSchedule.cosine(50)
    folder = pretrained.save_pretrained(model, tmp_path, s, "fixedsmall")
    loaded = UNet.from_pretrained(folder)
    torch.testing.assert_close(loaded.schedule.betas, s.betas, rtol=1e-15, atol=0)
    assert loaded.variance == "fixedsmall"


@pytest.mark.parametrize("padding", ["tf_same", "symmetric"])
def test_a_network_fed_t_itself_is_written_with_the_shift_folded_into_its_first_time_layer(padding, tmp_path, gen):
    """t_offset=0 (networks trained here before 2026-12-04) embeds t where diffusers embeds k = t - 1. Since
    e(t) = R e(t - 1), the exported first time layer is W R, and UNet2DModel computes our eps at k = t - 1 for
    every t, to float32 rounding: the same bar as the released networks (1e-5 of the output's scale; measured at
    most 8e-7). Either padding is written as diffusers' downsample_padding (0 or 1). Without the fold the outputs
    move by more than 1e-3 of their scale."""
    model = random_unet(gen, t_offset=0, downsample_padding=padding)
    folder = model.save_pretrained(tmp_path / "export", NoiseSchedule.linear(1000), "fixedlarge")
    twin = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    assert twin.config.downsample_padding == {"tf_same": 0, "symmetric": 1}[padding]
    assert_float32_equal(outputs(model, twin, gen, ts=(1, 2, 500, 999, 1000)))
    with torch.no_grad():
        twin.time_embedding.linear_1.weight.copy_(model.emb[0].weight)  # W, not W R
    gaps = [((a - b).abs().max() / b.abs().max()).item() for a, b in outputs(model, twin, gen, ts=(1, 500))]
    assert min(gaps) > 1e-3, gaps


def test_a_network_fed_t_minus_1_is_written_bit_for_bit(tmp_path, gen):
    model = random_unet(gen)
    folder = model.save_pretrained(tmp_path / "export", NoiseSchedule.linear(1000), "fixedlarge")
    twin = diffusers.UNet2DModel.from_pretrained(folder / "unet")
    assert all(torch.equal(twin.state_dict()[k], v) for k, v in pretrained.to_diffusers(model).items())
    assert torch.equal(twin.time_embedding.linear_1.weight, model.emb[0].weight)


@pytest.mark.parametrize("parameterization, prediction_type", [("eps", "epsilon"), ("x0", "sample"),
                                                                  ("v", "v_prediction")])
def test_save_pretrained_writes_the_prediction_type_of_the_networks_output(parameterization, prediction_type,
                                                                            tmp_path, gen):
    """What the network outputs goes into the scheduler config as diffusers names it, comes back as
    ``.parameterization``, and is kept when the loaded network is written again."""
    model = random_unet(gen)
    folder = model.save_pretrained(tmp_path / "a", NoiseSchedule.linear(20), "fixedlarge",
                                   parameterization=parameterization)
    assert diffusers.DDPMScheduler.from_pretrained(folder / "scheduler").config.prediction_type == prediction_type
    again = UNet.from_pretrained(folder)
    assert again.parameterization == parameterization
    third = UNet.from_pretrained(again.save_pretrained(tmp_path / "b"))
    assert third.parameterization == parameterization and third.schedule.T == 20
    assert ddpm.load(folder).parameterization == parameterization


def test_a_mean_network_is_refused_in_one_line_before_anything_is_written(tmp_path):
    """μ̃ has no diffusers prediction_type; the error says what to do instead."""
    with pytest.raises(ValueError, match=r"posterior mean \(parameterization 'mu'\) has no diffusers counterpart: "
                                         r".*python -m ddpm sample.*train parameterization 'eps', 'x0' or 'v'") \
            as error:
        UNet.preset("tiny").save_pretrained(tmp_path / "x", NoiseSchedule.linear(10), "fixedlarge",
                                            parameterization="mu")
    assert "\n" not in str(error.value) and not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="parameterization must be one of"):
        pretrained.save_pretrained(UNet.preset("tiny"), tmp_path / "x", NoiseSchedule.linear(10), "fixedlarge",
                                   parameterization="xstart")
    assert list(tmp_path.iterdir()) == []


def test_the_3x3_shortcut_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="conv_shortcut=True") as error:
        UNet.preset("tiny", conv_shortcut=True).save_pretrained(tmp_path / "x", NoiseSchedule.linear(10), "fixedlarge")
    assert "\n" not in str(error.value) and not (tmp_path / "x").exists()


def test_save_pretrained_is_a_method_that_defaults_to_the_models_own_schedule_and_variance(tmp_path, gen):
    fresh = UNet.preset("tiny")
    assert fresh.schedule is None and fresh.variance is None
    with pytest.raises(ValueError, match="pass schedule= .* and variance="):
        fresh.save_pretrained(tmp_path / "fresh")
    model = UNet.from_pretrained(pipeline_folder(tmp_path / "a", random_twin(narrow(CIFAR10, ch=8, size=8), gen),
                                                 "fixed_large", T=20))
    again = UNet.from_pretrained(model.save_pretrained(tmp_path / "b"))
    assert again.schedule.T == 20 and again.variance == "fixedlarge"
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    other = UNet.from_pretrained(model.save_pretrained(tmp_path / "c", NoiseSchedule.cosine(30), "fixedsmall"))
    assert other.schedule.T == 30 and other.variance == "fixedsmall"


def test_from_pretrained_puts_the_schedule_on_the_models_device(tmp_path, gen):
    """N10: indexing a CPU schedule with GPU timesteps syncs the GPU at every step ("meta" stands in for it)."""
    folder = pipeline_folder(tmp_path, random_twin(narrow(CIFAR10, ch=8, size=8), gen), "fixed_large")
    model = UNet.from_pretrained(folder, device="meta")
    assert model.conv_in.weight.device.type == model.schedule.betas.device.type == "meta"
    assert model.schedule.alpha_bars.device.type == "meta"


def test_unet_py_imports_the_file_format_only_inside_its_methods():
    """The model does not depend on the file format: ddpm.unet imports ddpm.pretrained lazily."""
    tree = ast.parse(Path(sys.modules["ddpm.unet"].__file__).read_text(encoding="utf-8"))
    top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not any("pretrained" in (getattr(node, "module", None) or "") or
                   any("pretrained" in alias.name for alias in node.names) for node in top)


# Writing safely ----------------------------------------------------------------------------------------------

def weights_files(folder) -> list[str]:
    return sorted(p.name for p in (folder / "unet").iterdir() if p.name.startswith("diffusion_pytorch_model"))


def same_weights(a: UNet, b: UNet) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_saving_over_a_pipeline_replaces_it_whole(tmp_path, gen):
    """N2: a .bin written over a .safetensors folder used to leave both, and the stale .safetensors was read."""
    a, b = random_unet(gen), random_unet(gen)
    s = NoiseSchedule.linear(10)
    a.save_pretrained(tmp_path / "out", s, "fixedlarge")
    b.save_pretrained(tmp_path / "out", s, "fixedlarge", safe_serialization=False)
    assert weights_files(tmp_path / "out") == ["diffusion_pytorch_model.bin"]
    assert same_weights(UNet.from_pretrained(tmp_path / "out"), b)
    a.save_pretrained(tmp_path / "out", s, "fixedsmall")
    assert weights_files(tmp_path / "out") == ["diffusion_pytorch_model.safetensors"]
    assert same_weights(UNet.from_pretrained(tmp_path / "out"), a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left beside it


def test_without_safetensors_nothing_is_written_and_the_error_says_what_to_do(tmp_path, monkeypatch):
    """N3, D5: safetensors is in the hub extra only; the check comes before any file is written."""
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors then fails
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    model, s = UNet.preset("tiny"), NoiseSchedule.linear(10)
    with pytest.raises(ImportError, match="pip install safetensors, or pass safe_serialization=False") as error:
        model.save_pretrained(tmp_path / "out", s, "fixedlarge")
    assert "\n" not in str(error.value) and list(tmp_path.iterdir()) == []
    model.save_pretrained(tmp_path / "out", s, "fixedlarge", safe_serialization=False)
    assert weights_files(tmp_path / "out") == ["diffusion_pytorch_model.bin"]


def test_a_failure_while_writing_leaves_the_old_folder_as_it_was(tmp_path, gen, monkeypatch):
    """A full disk halfway through the weights: the folder still holds the last complete pipeline, and nothing
    half-written is left beside it."""
    a, s = random_unet(gen), NoiseSchedule.linear(10)
    a.save_pretrained(tmp_path / "out", s, "fixedlarge")
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}

    def disk_full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        random_unet(gen).save_pretrained(tmp_path / "out", s, "fixedsmall", safe_serialization=False)
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert same_weights(UNet.from_pretrained(tmp_path / "out"), a)


@pytest.mark.parametrize("other", ["README.md", "unet/notes.txt"])
def test_a_folder_holding_other_files_is_not_overwritten(other, tmp_path):
    model, s = UNet.preset("tiny"), NoiseSchedule.linear(10)
    model.save_pretrained(tmp_path / "out", s, "fixedlarge")
    (tmp_path / "out" / other).write_text("mine")
    with pytest.raises(ValueError, match=f"holds \\['{other}'\\].*pass a new or empty one") as error:
        model.save_pretrained(tmp_path / "out", s, "fixedsmall")
    assert "\n" not in str(error.value) and (tmp_path / "out" / other).read_text() == "mine"
    (tmp_path / "empty").mkdir()
    model.save_pretrained(tmp_path / "empty", s, "fixedlarge")
    assert weights_files(tmp_path / "empty") == ["diffusion_pytorch_model.safetensors"]


# Errors ----------------------------------------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


HOW = r"`hf download google/ddpm-cifar10-32 --local-dir DIR`.*pass its path"


def test_a_hub_name_offline_fails_at_once_saying_how_to_download_it_elsewhere(no_network, monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=HOW):
        UNet.from_pretrained("google/ddpm-cifar10-32")
    assert time.perf_counter() - start < 5


def test_a_hub_name_without_network_fails_with_the_same_advice(no_network, monkeypatch, tmp_path):
    """What snapshot_download raises when it cannot reach the Hub and has no cached copy (measured offline)."""
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(name, **kwargs):
        raise hub.utils.LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub")
    monkeypatch.setattr(hub, "snapshot_download", unreachable)
    monkeypatch.chdir(tmp_path)  # no folder called google/ddpm-cifar10-32 here
    with pytest.raises(ConnectionError, match=HOW):
        UNet.from_pretrained("google/ddpm-cifar10-32")


@pytest.mark.parametrize("what, message", [
    ("missing", "neither a checkpoint folder nor a Hub name"),
    ("empty", "holds no unet/config.json"),
    ("no weights", "neither diffusion_pytorch_model.safetensors nor diffusion_pytorch_model.bin"),
    ("flip_sin_to_cos", r"differs from the DDPM network in \{'flip_sin_to_cos': True\}"),
    ("learned variance", "variance_type='learned_range'"),
    ("extra weight", "weights ddpm.UNet does not"),
])
def test_folders_that_are_not_ddpm_checkpoints_are_refused_in_one_line(what, message, tmp_path, gen):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    if what not in ("missing", "empty"):
        twin = random_twin(narrow(CIFAR10, ch=8, size=8), gen)
        pipeline_folder(folder, twin, "learned_range" if what == "learned variance" else "fixed_large")
        config = folder / "unet" / "config.json"
        if what == "flip_sin_to_cos":
            config.write_text(json.dumps({**json.loads(config.read_text()), "flip_sin_to_cos": True}))
        if what == "no weights":
            (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
        if what == "extra weight":
            twin.register_buffer("stray", torch.zeros(1))
            twin.save_pretrained(folder / "unet")
    with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
        UNet.from_pretrained(tmp_path / "nowhere" if what == "missing" else folder)
    assert "\n" not in str(error.value)
