"""The paper's released checkpoints (ddpm/pretrained.py, UNet.from_pretrained), checked offline against diffusers.

The Hub's google/ddpm-* folders are rebuilt here from their published config files, with random weights:
diffusers' UNet2DModel writes them (save_pretrained), ddpm.UNet reads them, and the two networks must compute
the same function when diffusers is fed t − 1 and ddpm the paper's t. Nothing is downloaded.
"""

import json
import socket
import time

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


def pipeline_folder(where, twin, variance: str, T: int = 1000):
    """A Hub-like pipeline folder written by diffusers itself."""
    twin.save_pretrained(where / "unet")
    scheduler = diffusers.DDPMScheduler(**{**{k: v for k, v in SCHEDULER.items() if not k.startswith("_")},
                                           "num_train_timesteps": T, "variance_type": variance})
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


def test_a_schedule_other_than_linear_is_written_as_its_betas(tmp_path):
    model = UNet.preset("tiny", downsample_padding="tf_same", t_offset=1)
    s = NoiseSchedule.cosine(50)
    folder = pretrained.save_pretrained(model, tmp_path, s, "fixedsmall")
    loaded = UNet.from_pretrained(folder)
    torch.testing.assert_close(loaded.schedule.betas, s.betas, rtol=1e-15, atol=0)
    assert loaded.variance == "fixedsmall"


def test_only_networks_fed_t_minus_1_are_written_in_diffusers_layout(tmp_path):
    with pytest.raises(ValueError, match="t_offset=1"):
        pretrained.save_pretrained(UNet.preset("tiny"), tmp_path, NoiseSchedule.linear(10), "fixedlarge")


# Errors ----------------------------------------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


HOW = r"huggingface-cli download google/ddpm-cifar10-32 --local-dir DIR.*pass its path"


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
