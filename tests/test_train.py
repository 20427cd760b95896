"""The training loop: defaults, data order, EMA, atomic weights-only checkpoints, exact resume, NaN stop, Ctrl-C,
GPU flags, the run folder and the data checked before any work, the sample grid."""

import csv
import math
import os
import random
import shlex
import signal
import subprocess
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
import torch
import torch.nn.functional as F
from torch import nn

import ddpm.checkpoint as checkpoint
import ddpm.train as train_mod
from ddpm.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ddpm.ema import ema_copy, ema_decay, ema_update
from ddpm.batches import StepBatches, batch_indices, step_noise
from ddpm.config import native_bf16
from ddpm.losses import l_vlb
from ddpm.train import NonFiniteLossError, TrainConfig, resolve, train


class TinyNet(nn.Module):
    """A small ε-network with a timestep embedding, GroupNorm and dropout, fast on a CPU."""

    def __init__(self, T=50, dropout=0.2, fail_at=None, fail_with=None):
        """From forward call ``fail_at`` on: a kill (fail_with=None) or NaN outputs ("nan"); at that call only,
        one Ctrl-C ("ctrl-c") or two ("ctrl-c twice"), sent as a terminal sends it, after which it computes on."""
        super().__init__()
        self.emb = nn.Embedding(T + 1, 8)
        self.conv1, self.norm = nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.drop, self.conv2 = nn.Dropout(dropout), nn.Conv2d(8, 1, 3, padding=1)
        self.calls, self.fail_at, self.fail_with, self.dtypes = 0, fail_at, fail_with, set()

    def forward(self, x, t):
        self.calls += 1
        failing = self.fail_at is not None and self.calls >= self.fail_at
        if failing and self.fail_with is None:
            raise KeyboardInterrupt("simulated kill")
        if self.calls == self.fail_at and self.fail_with in ("ctrl-c", "ctrl-c twice"):
            for _ in range(2 if self.fail_with == "ctrl-c twice" else 1):
                signal.raise_signal(signal.SIGINT)  # its Python handler runs before raise_signal returns
        h = self.conv1(x)
        self.dtypes.add(h.dtype)  # bfloat16 under autocast
        h = h + self.emb(t)[:, :, None, None]
        out = self.conv2(self.drop(F.silu(self.norm(h))))
        return out * float("nan") if failing and self.fail_with == "nan" else out


def images(n=24, seed=0):
    """n random 1x8x8 images on the 256-level grid."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g).float() / 127.5 - 1


def config(tmp_path, **kw):
    base = dict(T=50, batch_size=4, steps=7, warmup=3, lr=1e-3, log_every=1, sample_every=0, checkpoint_every=4,
                flip=True, out_dir=tmp_path / "run", seed=3)  # a Path is stored as str
    return TrainConfig(**{**base, **kw})


def weights(result):
    return {**{f"model.{k}": v for k, v in result.model.state_dict().items()},
            **{f"ema.{k}": v for k, v in result.ema.state_dict().items()}}


def native(monkeypatch, cuda=False, avx512_bf16=False, amx=False):
    """Pretend the GPU and the CPU do (or do not) have native bf16."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


def test_defaults_follow_the_data_and_the_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    native(monkeypatch, cuda=True)
    digits = resolve(TrainConfig(), (1, 8, 8), cpu)
    assert (digits.model, digits.flip, digits.image_size, digits.warmup) == ("tiny", False, 8, 200)
    # benchmarks/DIGITS_RECIPE.md: the paper's batch at 2.5 times its learning rate, about 3 CPU minutes
    assert (digits.batch_size, digits.lr, digits.steps) == (128, 5e-4, 1500)
    assert not (digits.bf16 or digits.compile or digits.channels_last or digits.num_workers)
    faces = resolve(TrainConfig(data="celeba"), (3, 64, 64), cuda)
    assert (faces.model, faces.flip, faces.warmup, faces.batch_size, faces.lr) == ("celeba64", True, 5000, 128, 2e-4)
    assert faces.bf16 and faces.compile and faces.channels_last and faces.num_workers >= 1
    off = resolve(TrainConfig(data="celeba", bf16=False, flip=False, model="tiny"), (3, 64, 64), cuda)
    assert (off.bf16, off.flip, off.model, off.compile) == (False, False, "tiny", True)
    with pytest.raises(ValueError, match="divide evenly across the 3 processes"):
        resolve(TrainConfig(batch_size=128), (1, 8, 8), cpu, world_size=3)
    with pytest.raises(ValueError, match="no UNet preset for 48x48"):
        resolve(TrainConfig(data="x.npy"), (3, 48, 48), cpu)
    with pytest.raises(ValueError, match="lr > 0"):
        resolve(TrainConfig(lr=0.0), (1, 8, 8), cpu)
    with pytest.raises(ValueError, match="unknown model preset"):
        resolve(TrainConfig(model="resnet"), (1, 8, 8), cpu)


def test_256_pixel_runs_default_to_the_papers_lr_and_batch():
    """run_celebahq.py and run_lsun.py trained the 256x256 models at lr 2e-5, batch 64."""
    big = resolve(TrainConfig(data="faces.npy"), (3, 256, 256), torch.device("cpu"))
    assert (big.model, big.lr, big.batch_size) == ("celebahq256", 2e-5, 64)
    mine = resolve(TrainConfig(data="faces.npy", lr=1e-4, batch_size=32), (3, 256, 256), torch.device("cpu"))
    assert (mine.lr, mine.batch_size) == (1e-4, 32)


@pytest.mark.parametrize("device, probes, expected", [
    ("cpu", {}, False),                        # a CPU without AVX512-BF16 or AMX
    ("cpu", {"avx512_bf16": True}, True),
    ("cpu", {"amx": True}, True),
    ("cuda", {"cuda": False}, False),          # e.g. a V100 or T4
    ("cuda", {"cuda": True}, True),
])
def test_bf16_is_on_by_default_only_where_the_device_runs_it_natively(monkeypatch, device, probes, expected):
    native(monkeypatch, **probes)
    assert resolve(TrainConfig(), (1, 8, 8), torch.device(device)).bf16 is expected
    for flag in (True, False):  # the flag always wins
        assert resolve(TrainConfig(bf16=flag), (1, 8, 8), torch.device(device)).bf16 is flag


@pytest.mark.parametrize("parameterization, expected", [("eps", True), ("v", True), ("mu", False), ("x0", False)])
def test_bf16_is_on_by_default_for_the_outputs_whose_rounding_is_not_amplified(parameterization, expected, monkeypatch):
    """ε and v (ddpm.config.resolve; tests/test_parameterization.py, test_a_bf16_v_output_is_not_amplified), on
    a device that runs bf16 natively; μ̃ and x_0 train in float32 unless asked."""
    native(monkeypatch, cuda=True)
    assert resolve(TrainConfig(parameterization=parameterization), (1, 8, 8), torch.device("cuda")).bf16 is expected


def test_bf16_default_on_this_machine_follows_its_cpu():
    """Whatever CPU runs the tests (it varies from machine to machine): bf16 is on where it has either flag."""
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    native_here = "avx512_bf16" in flags or "amx_tile" in flags
    assert resolve(TrainConfig(), (1, 8, 8), torch.device("cpu")).bf16 is native_here


def test_each_epoch_visits_every_example_once_and_ranks_split_the_global_batch():
    n, B, seed = 10, 4, 7
    stream = torch.cat([batch_indices(n, B, seed, k) for k in range(5)])  # 20 positions: two epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])  # a fresh permutation per epoch
    whole = list(StepBatches(n, B, seed, 2, 5))
    halves = [list(StepBatches(n, B, seed, 2, 5, rank=r, world_size=2)) for r in (0, 1)]
    assert whole == [a + b for a, b in zip(*halves)]
    t, noise, flip = step_noise(seed, 5, 50, B, (1, 8, 8))
    parts = [step_noise(seed, 5, 50, B, (1, 8, 8), slice(2 * r, 2 * r + 2)) for r in (0, 1)]
    assert torch.equal(t, torch.cat([parts[0][0], parts[1][0]])) and t.min() >= 1 and t.max() <= 50
    assert torch.equal(noise, torch.cat([parts[0][1], parts[1][1]]))
    assert torch.equal(flip, torch.cat([parts[0][2], parts[1][2]]))
    assert not torch.equal(noise, step_noise(seed, 6, 50, B, (1, 8, 8))[1])  # each step draws afresh

def test_ema_decay_warms_up_and_update_is_the_moving_average():
    assert ema_decay(1) == pytest.approx(2 / 11) and ema_decay(8) == pytest.approx(0.5)
    assert ema_decay(89_989) < 0.9999 and ema_decay(89_990) == 0.9999 and ema_decay(10**7) == 0.9999
    model = nn.Linear(3, 2)
    ema = ema_copy(model)
    before = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema_update(ema, model, 0.9)
    for e, b, p in zip(ema.parameters(), before, model.parameters()):
        assert torch.allclose(e, 0.9 * b + 0.1 * p) and not e.requires_grad
    with pytest.raises(ValueError, match="EMA decay"):
        ema_decay(1, 1.0)


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    good = {"step": 1, "model": {"w": torch.arange(1000.0)}, "ema": {}, "config": {}}
    save_checkpoint(good, path)
    real_save = torch.save

    def dies_halfway(obj, f):  # writes part of the file, then the process "dies"
        real_save(obj, f)
        f.truncate(100)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint.torch, "save", dies_halfway)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint({**good, "step": 2, "model": {"w": torch.zeros(1000)}}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.arange(1000.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind
    path.write_bytes(path.read_bytes()[:200])  # a torn file (written without this module) is reported clearly
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)


class Payload:
    ran = []

    def __reduce__(self):
        return (Payload.ran.append, ("code ran",))


def test_checkpoints_load_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "model": {}, "ema": {}, "config": {}, "x": Payload()}, path)
    with pytest.raises(ValueError, match="not a safe ddpm checkpoint"):
        load_checkpoint(path)
    assert Payload.ran == []
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    save_checkpoint({"rng": rng_state(), "step": 0, "model": {}, "ema": {}, "config": {"a": [1, None]}}, path)
    state = load_checkpoint(path)  # the RNG states are stored as tensors and plain values
    draw = lambda: (torch.rand(3), random.random(), np.random.rand())
    first = draw()
    set_rng_state(state["rng"])
    again = draw()
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_a_killed_run_resumes_bit_for_bit(tmp_path):
    """Kill at step 6 (after the checkpoint at 4), resume, reach step 7: the same weights, EMA, Adam state and
    log as a run that never stopped. The steps cross an epoch (24 images, 4 per batch) and use flips and dropout."""
    data = images()
    torch.manual_seed(0)
    straight = train(config(tmp_path / "a"), TinyNet(), data, progress=False)
    killed = config(tmp_path / "b")
    torch.manual_seed(0)  # the same initial weights
    net = TinyNet(fail_at=6)
    torch.manual_seed(123)  # but the global RNG state when a run starts must not matter
    with pytest.raises(KeyboardInterrupt):
        train(killed, net, data, progress=False)
    assert load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")["step"] == 4
    assert len(read_log(tmp_path / "b" / "run" / "log.csv")) == 1 + 5  # header, steps 1-5 logged before the kill
    resumed = train(replace(killed, resume=True), TinyNet(), data, progress=False)
    assert resumed.step == straight.step == 7 and resumed.losses == straight.losses[4:]
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.conv1.weight"], a["ema.conv1.weight"])
    sa = load_checkpoint(tmp_path / "a" / "run" / "checkpoint.pt")["optimizer"]["state"]
    sb = load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")["optimizer"]["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert read_log(tmp_path / "a" / "run" / "log.csv") == read_log(tmp_path / "b" / "run" / "log.csv")
    again = train(replace(killed, resume=True), TinyNet(), data, progress=False)  # already done: trains nothing
    assert again.step == 7 and again.losses == [] and torch.equal(again.model.conv1.weight, a["model.conv1.weight"])


def test_a_run_is_not_overwritten_and_resumes_only_with_its_config(tmp_path):
    data = images()
    cfg = config(tmp_path, steps=2, checkpoint_every=0)
    train(cfg, TinyNet(), data, progress=False)
    with pytest.raises(ValueError, match="already exists; pass resume=True"):
        train(cfg, TinyNet(), data, progress=False)
    with pytest.raises(ValueError, match=r"another config.*batch_size=4 there, 8 here.*only lr, warmup, grad_clip"):
        train(replace(cfg, resume=True, batch_size=8, steps=3), TinyNet(), data, progress=False)
    with pytest.raises(ValueError, match=r"parameterization='eps' there, 'x0' here"):
        train(replace(cfg, resume=True, parameterization="x0", steps=3), TinyNet(), data, progress=False)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = config(tmp_path, steps=20, log_every=10, checkpoint_every=4)  # the NaN at step 6 is seen at step 8
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 6.*\(step 4\) is kept.*lower learning rate"):
        train(cfg, TinyNet(fail_at=6, fail_with="nan"), images(), progress=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for part in ("model", "ema") for v in state[part].values())


def test_the_gpu_switches_are_honoured_on_a_cpu(tmp_path, monkeypatch):
    compiled, autocasts = [], []
    real_autocast = torch.autocast
    monkeypatch.setattr(train_mod.torch, "compile", lambda m: compiled.append(m) or m)
    monkeypatch.setattr(train_mod.torch, "autocast", lambda *a, **k: autocasts.append((a, k)) or real_autocast(*a, **k))
    net = TinyNet(dropout=0.0)
    cfg = config(tmp_path, steps=2, bf16=True, compile=True, channels_last=True)
    result = train(cfg, net, images(), progress=False)
    assert compiled == [net]
    assert autocasts[0] == (("cpu", torch.bfloat16), {"enabled": True}) and torch.bfloat16 in net.dtypes
    assert result.model.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    compiled.clear()
    native(monkeypatch)  # a CPU without native bf16 (whatever this machine's CPU has)
    net = TinyNet(dropout=0.0)
    result = train(config(tmp_path / "off", steps=1), net, images(), progress=False)  # the CPU defaults: all off
    assert compiled == [] and net.dtypes == {torch.float32} and not result.config.bf16
    assert not result.model.conv2.weight.is_contiguous(memory_format=torch.channels_last)


def test_the_tiny_unet_learns_the_digits_and_saves_sample_grids(tmp_path, seed):
    """The real path (digits data, the tiny preset): over 50 steps L_simple falls from about 0.85 to about 0.2
    (measured). Each step's loss is a noisy estimate (a batch of 32 with random t), so we ask that the
    mean of the last 10 lie below the mean of the first 10 by more than 4 standard errors of the difference."""
    cfg = TrainConfig(steps=50, batch_size=32, lr=2e-3, warmup=10, T=100, sample_every=25, num_samples=4,
                      checkpoint_every=0, seed=seed, out_dir=str(tmp_path / "run"))
    result = train(cfg, progress=False)
    first, last = torch.tensor(result.losses[:10]), torch.tensor(result.losses[-10:])
    se = (first.var() / 10 + last.var() / 10).sqrt()
    assert first.mean() - last.mean() > 4 * se, (first.mean(), last.mean(), se)
    assert (result.config.model, result.config.flip) == ("tiny", False)
    grids = sorted((tmp_path / "run" / "samples").iterdir())
    assert [g.name for g in grids] == ["step_0000025.png", "step_0000050.png"]
    assert Image.open(grids[-1]).size == (2 * (64 + 2) + 2,) * 2  # 8x8 digits scaled up 8x, so they can be seen


def test_the_true_bound_as_objective(tmp_path):
    """loss='vlb' trains on the bound's term L_(t-1) in bits/dim at the step's t (Eq. 5, see ``l_vlb``): the
    first step's logged loss and gradient norm are those of l_vlb on that step's images, t and ε, computed here
    directly with the initial network (L_simple gives another loss on the same draws)."""
    data = images()
    cfg = config(tmp_path, steps=1, flip=False, loss="vlb", variance="fixedsmall", bf16=False)
    torch.manual_seed(0)
    net = TinyNet(dropout=0.0)
    initial = TinyNet(dropout=0.0)
    initial.load_state_dict(net.state_dict())
    bound = train(cfg, net, data, progress=False)
    x0 = data[batch_indices(len(data), cfg.batch_size, cfg.seed, 0)]
    t, noise, _ = step_noise(cfg.seed, 0, cfg.T, cfg.batch_size, x0.shape[1:])
    s = cfg.noise_schedule()
    expected = l_vlb(s, initial, x0, t, noise, "fixedsmall")
    expected.backward()
    norm = torch.stack([p.grad.norm() for p in initial.parameters()]).norm()
    assert bound.losses[0] == pytest.approx(expected.item(), rel=1e-6)
    assert bound.losses[0] != pytest.approx(train_mod.l_simple(s, initial, x0, t, noise).item(), rel=1e-3)
    step_1 = read_log(tmp_path / "run" / "log.csv")[1]
    assert float(step_1[3]) == pytest.approx(norm.item(), rel=1e-5)
    with pytest.raises(ValueError, match="loss must be 'simple' or 'vlb'"):
        train(config(tmp_path / "bad", loss="l1"), TinyNet(), data, progress=False)


def test_a_v_network_learns_the_digits(tmp_path, seed):
    """parameterization="v" (Salimans & Ho 2022) on the real path, the tiny preset on digits, 30 steps: the
    unweighted MSE to v falls, by the same 4-standard-error bar as the ε run above (measured over 10 seeds: from
    0.83-0.88 to 0.54-0.58 between the first and the last 10 steps, 8-13 standard errors)."""
    cfg = TrainConfig(steps=30, batch_size=32, lr=2e-3, warmup=5, T=100, sample_every=0, checkpoint_every=0,
                      parameterization="v", bf16=False, seed=seed, out_dir=str(tmp_path / "run"))
    result = train(cfg, progress=False)
    first, last = torch.tensor(result.losses[:10]), torch.tensor(result.losses[-10:])
    se = (first.var() / 10 + last.var() / 10).sqrt()
    assert first.mean() - last.mean() > 4 * se, (first.mean(), last.mean(), se)


@pytest.mark.parametrize("loss", ["simple", "vlb"])
def test_a_v_network_trains_on_its_own_target(loss, tmp_path):
    """The first step's logged loss is the MSE to v = √ᾱ_t ε − √(1 − ᾱ_t) x_0, written out here from ᾱ_t, on that
    step's images, t and ε (loss="simple"), or the bound's term of the v-network seen as an ε-model (loss="vlb");
    the ε-network's loss on the same draws is another number."""
    data = images()
    cfg = config(tmp_path, steps=1, flip=False, loss=loss, parameterization="v", bf16=False)
    torch.manual_seed(0)
    net = TinyNet(dropout=0.0)
    initial = TinyNet(dropout=0.0)
    initial.load_state_dict(net.state_dict())
    first = train(cfg, net, data, progress=False).losses[0]
    x0 = data[batch_indices(len(data), cfg.batch_size, cfg.seed, 0)]
    t, noise, _ = step_noise(cfg.seed, 0, cfg.T, cfg.batch_size, x0.shape[1:])
    s = cfg.noise_schedule()
    ab = s.alpha_bars[t].reshape(-1, 1, 1, 1).float()
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    with torch.no_grad():
        if loss == "simple":
            expected = ((initial(xt, t) - (ab.sqrt() * noise - (1 - ab).sqrt() * x0)) ** 2).mean()
            eps_loss = train_mod.l_simple(s, initial, x0, t, noise)
        else:
            expected = l_vlb(s, initial, x0, t, noise, cfg.variance, parameterization="v")
            eps_loss = l_vlb(s, initial, x0, t, noise, cfg.variance)
    assert first == pytest.approx(expected.item(), rel=1e-5)
    assert first != pytest.approx(eps_loss.item(), rel=1e-3)


def test_ema_update_equals_the_loop_over_parameters_bit_for_bit(gen):
    """The fused _foreach update gives exactly what lerp_ on each parameter gave, and copies the buffers."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(5, 2))
    ema = ema_copy(model)
    with torch.no_grad():
        for p in (*model.parameters(), *ema.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen))
        model[1].running_mean.copy_(torch.randn(4, generator=gen))
    expected = [e.clone().lerp_(p, 1 - 0.9999) for e, p in zip(ema.parameters(), model.parameters())]
    ema_update(ema, model, 0.9999)
    assert all(torch.equal(e, x) for e, x in zip(ema.parameters(), expected))
    assert torch.equal(ema[1].running_mean, model[1].running_mean)


class Unreadable(torch.utils.data.Dataset):
    """``data``, except that item ``bad`` (while ``broken``) raises what a corrupt image raises."""

    def __init__(self, data, bad, broken=True):
        self.data, self.bad, self.broken = data, bad, broken

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if self.broken and i == self.bad:
            raise ValueError(f"cannot read /data/celeba/{i:06d}.jpg: image file is truncated; replace it")
        return self.data[i]


def test_an_unreadable_image_keeps_the_finished_steps_and_says_which_file(tmp_path):
    """No checkpoint is due before step 20, yet the steps done before the bad image are saved, the error is
    one line naming the file, and after the image is fixed the resumed run equals one that never failed."""
    data = images()
    cfg = config(tmp_path, steps=20, checkpoint_every=0, log_every=4)
    bad = int(batch_indices(len(data), 4, cfg.seed, 9)[0])  # first read in step 10 (steps count from 0 here)
    first = next(k for k in range(20) if bad in batch_indices(len(data), 4, cfg.seed, k).tolist())
    torch.manual_seed(0)
    straight = train(replace(cfg, out_dir=tmp_path / "straight"), TinyNet(), data, progress=False)
    torch.manual_seed(0)
    dataset = Unreadable(data, bad)
    with pytest.raises(ValueError) as caught:
        train(cfg, TinyNet(), dataset, progress=False)
    message = str(caught.value)
    assert f"/data/celeba/{bad:06d}.jpg" in message and "\n" not in message
    assert f"the checkpoint of step {first} in {tmp_path / 'run'} is kept" in message
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == first
    assert [int(r[0]) for r in read_log(tmp_path / "run" / "log.csv")[1:]] == list(range(1, first + 1))
    dataset.broken = False
    resumed = train(replace(cfg, resume=True), TinyNet(), dataset, progress=False)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_unreadable_image_in_a_loader_worker_is_one_line(tmp_path):
    """A DataLoader worker re-raises the error with its traceback inside the message; the run keeps one line."""
    data = images()
    cfg = config(tmp_path, steps=3, checkpoint_every=0, num_workers=1)
    bad = int(batch_indices(len(data), 4, cfg.seed, 1)[0])
    with pytest.raises(ValueError) as caught:
        train(cfg, TinyNet(), Unreadable(data, bad), progress=False)
    assert str(caught.value).startswith(f"cannot read /data/celeba/{bad:06d}.jpg") and "\n" not in str(caught.value)


def test_after_a_nan_stop_lr_warmup_and_clip_may_change_on_resume_and_are_recorded(tmp_path):
    cfg = config(tmp_path, steps=10, log_every=10, checkpoint_every=4)
    with pytest.raises(NonFiniteLossError, match=r"lower learning rate, run `.*lr=0\.0001\)`"):
        train(cfg, TinyNet(fail_at=6, fail_with="nan"), images(), progress=False)
    lower = replace(cfg, resume=True, lr=1e-4, warmup=5, grad_clip=0.5)
    result = train(lower, TinyNet(), images(), progress=False)
    assert result.step == 10 and all(math.isfinite(v) for v in result.losses)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["changes"] == [{"step": 4, "lr": [1e-3, 1e-4], "warmup": [3, 5], "grad_clip": [1.0, 0.5]}]
    assert (state["config"]["lr"], state["config"]["warmup"], state["config"]["grad_clip"]) == (1e-4, 5, 0.5)
    log = read_log(tmp_path / "run" / "log.csv")
    assert log[0] == ["step", "loss", "lr", "grad_norm", "note"]
    assert [r[0] for r in log[1:]] == [str(k) for k in range(1, 11)]
    assert log[5][4] == "resumed with lr=0.0001 (was 0.001), warmup=5 (was 3), grad_clip=0.5 (was 1.0)"
    assert float(log[5][2]) == 1e-4 and all(r[4] == "" for r in log[1:5] + log[6:])


def test_the_nan_and_ctrl_c_messages_give_a_command_that_works(tmp_path, monkeypatch):
    """With the config's own data and network, the messages hold a command line; run as given, it goes on."""
    from ddpm.__main__ import main

    cfg = TrainConfig(T=50, batch_size=8, steps=4, warmup=2, log_every=1, sample_every=0, checkpoint_every=2,
                      out_dir=str(tmp_path / "run"), seed=5)
    real, calls = train_mod.l_simple, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "l_simple", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        train(cfg, progress=False)
    monkeypatch.undo()
    message = str(caught.value)
    assert message.startswith(f"at step 2; the checkpoint of step 2 in {tmp_path / 'run'} is kept; "
                              "continue with `python -m ddpm train ") and "\n" not in message
    argv = shlex.split(message.split("`")[1])
    assert argv[:4] == ["python", "-m", "ddpm", "train"] and argv[-1] == "--resume"
    assert main(argv[3:] + ["--quiet"]) == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 4

    calls.clear()
    monkeypatch.setattr(train_mod, "l_simple", lambda *args, **kwargs: real(*args, **kwargs) * (
        math.nan if calls.append(1) or len(calls) == 3 else 1))
    with pytest.raises(NonFiniteLossError) as caught:
        train(replace(cfg, out_dir=str(tmp_path / "nan")), progress=False)
    argv = shlex.split(str(caught.value).split("`")[1])
    assert argv[-1] == "--resume" and argv.count("--lr") == 1 and argv[argv.index("--lr") + 1] == "5e-05"
    assert main(argv[3:] + ["--quiet"]) == 0  # the default lr / 10 from the step-2 checkpoint: no NaN now
    assert load_checkpoint(tmp_path / "nan" / "checkpoint.pt")["changes"] == [{"step": 2, "lr": [5e-4, 5e-5]}]


def test_resume_asks_for_fewer_steps_than_done(tmp_path):
    data = images()
    cfg = config(tmp_path, steps=3, checkpoint_every=0)
    train(cfg, TinyNet(), data, progress=False)
    with pytest.raises(ValueError, match=r"has done 3 steps, more than steps=2: nothing to do.*larger steps"):
        train(replace(cfg, resume=True, steps=2), TinyNet(), data, progress=False)


def test_a_resume_may_switch_channels_last(tmp_path):
    """The saved Adam moments keep their layout; on resume they take the parameters' (CUDA's fused Adam needs it)."""
    data = images()
    cfg = config(tmp_path, steps=2, checkpoint_every=0, channels_last=True)
    train(cfg, TinyNet(dropout=0.0), data, progress=False)
    result = train(replace(cfg, steps=3, resume=True, channels_last=False), TinyNet(dropout=0.0), data,
                   progress=False)
    adam = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["optimizer"]["state"]
    for i, p in enumerate(result.model.parameters()):
        assert adam[i]["exp_avg"].stride() == adam[i]["exp_avg_sq"].stride() == p.stride()


def test_the_bar_shows_the_loss_and_the_precision_from_the_first_steps(tmp_path, capfd):
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, steps=20, log_every=50, checkpoint_every=0), TinyNet(fail_at=4), images())
    err = capfd.readouterr().err
    assert err.startswith("train: float32" if not native_bf16(torch.device("cpu")) else "train: bf16 autocast")
    assert "loss=" in err
    train(config(tmp_path / "grid", steps=2, sample_every=2, num_samples=1), TinyNet(T=50), images())
    assert "drawing samples" in capfd.readouterr().err


def test_the_data_folder_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = train(config(tmp_path, steps=1, data_dir="celeba"), TinyNet(), images(), progress=False)
    assert result.config.data_dir == str(tmp_path / "celeba")
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["config"]["data_dir"] == str(tmp_path / "celeba")


def test_log_csv_is_rewritten_atomically_on_resume(tmp_path, monkeypatch):
    data = images()
    cfg = config(tmp_path, steps=4, checkpoint_every=2)
    train(cfg, TinyNet(), data, progress=False)
    before = (tmp_path / "run" / "log.csv").read_text()

    class Killed:
        def __init__(self, f):
            pass

        def writerows(self, rows):
            raise KeyboardInterrupt("killed while the log is rewritten")

    monkeypatch.setattr(train_mod.csv, "writer", Killed)
    with pytest.raises(KeyboardInterrupt):
        train(replace(cfg, resume=True, steps=6), TinyNet(), data, progress=False)
    assert (tmp_path / "run" / "log.csv").read_text() == before


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler for the test, whatever the runner inherited (a job started in the
    background of a non-interactive shell ignores SIGINT); the inherited one is put back afterwards."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def test_ctrl_c_saves_the_last_finished_step_and_the_run_resumes_bit_for_bit(tmp_path, python_sigint_handler):
    """A Ctrl-C in the middle of step 6 lets step 6 finish, saves it (no checkpoint was due before step 8), says
    so once, and gives Python's handler back; resumed from there, the run equals one that never stopped. A
    second Ctrl-C stops at once: the step under way is dropped and the last checkpoint (none here) kept."""
    data = images()
    cfg = config(tmp_path, steps=9, checkpoint_every=8, log_every=4)
    torch.manual_seed(0)
    straight = train(replace(cfg, out_dir=tmp_path / "straight"), TinyNet(), data, progress=False)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt) as caught:
        train(cfg, TinyNet(fail_at=6, fail_with="ctrl-c"), data, progress=False)
    assert str(caught.value) == (f"at step 6; saved the checkpoint of step 6 in {tmp_path / 'run'}; continue with "
                                 "`the same train(...) call with config=replace(config, resume=True)`")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 6
    assert [int(r[0]) for r in read_log(tmp_path / "run" / "log.csv")[1:]] == [1, 2, 3, 4, 5, 6]
    resumed = train(replace(cfg, resume=True), TinyNet(), data, progress=False)
    assert resumed.losses == straight.losses[6:]
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_log(tmp_path / "straight" / "log.csv") == read_log(tmp_path / "run" / "log.csv")

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt) as caught:
        train(replace(cfg, out_dir=tmp_path / "twice"), TinyNet(fail_at=6, fail_with="ctrl-c twice"), data,
              progress=False)
    assert str(caught.value).startswith("at step 5; no checkpoint had been saved yet; continue with")
    assert not (tmp_path / "twice" / "checkpoint.pt").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_log_without_the_grad_norm_column_still_resumes(tmp_path):
    """log.csv written before it had a grad_norm column: cut back and rewritten with the column, left empty."""
    data = images()
    cfg = config(tmp_path, steps=4, checkpoint_every=2)
    train(cfg, TinyNet(), data, progress=False)
    path = tmp_path / "run" / "log.csv"
    rows = read_log(path)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["step", "loss", "lr", "note"]] + [[r[0], r[1], r[2], "old"] for r in rows[1:]])
    train(replace(cfg, resume=True, steps=5), TinyNet(), data, progress=False)
    log = read_log(path)
    assert log[0] == ["step", "loss", "lr", "grad_norm", "note"] and [r[0] for r in log[1:]] == list("12345")
    assert [r[1:3] for r in log[1:5]] == [r[1:3] for r in rows[1:5]]
    assert all(r[3:] == ["", "old"] for r in log[1:5]) and float(log[5][3]) > 0 and log[5][4] == ""


def test_an_unwritable_out_dir_is_refused_before_any_work(tmp_path):
    """A ValueError that names out_dir and --out-dir, before the data is read (a missing .npy here)."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for out in (afile, afile / "run"):
        with pytest.raises(ValueError, match=r"out_dir .* cannot be written: .* is a file, not a folder; choose another with out_dir= \(--out-dir\)"):
            train(TrainConfig(data=str(tmp_path / "missing.npy"), out_dir=str(out)), progress=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    immutable = os.geteuid() == 0  # root writes in a folder of mode 555: make it immutable instead
    if immutable and subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
        pytest.skip("running as root, which writes in any folder chmod makes read-only, and chattr +i fails here")
    try:
        for out in (ro, ro / "run"):
            with pytest.raises(ValueError, match=r"out_dir .* cannot be written: .*choose another .*--out-dir"):
                train(TrainConfig(data=str(tmp_path / "missing.npy"), out_dir=str(out)), progress=False)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(ro)], check=True)
        ro.chmod(0o755)


def test_data_that_are_not_images_are_refused_in_one_line(tmp_path):
    points = torch.randn(64, 2)  # 2-D points, as a toy data set holds them
    with pytest.raises(ValueError, match=r"^train needs images: items \[C, H, W\].*item 0 of the data is of "
                                         r"shape \[2\]; for other data \(e\.g\. 2-D points\)") as caught:
        train(config(tmp_path), nn.Linear(2, 2), list(points), progress=False)
    assert "\n" not in str(caught.value)


def test_the_sample_grid_uses_the_runs_sampling_variance(tmp_path, monkeypatch):
    """σ_t² = β̃_t for a bound trained with it, and at 256x256 (as the original sampled its 256 models)."""
    used = []

    def sample(s, eps_model, shape, **kwargs):
        used.append(kwargs["variance"])
        return torch.zeros(shape)

    monkeypatch.setattr(train_mod, "sample", sample)
    cfg = config(tmp_path, steps=1, sample_every=1, num_samples=1)
    train(replace(cfg, out_dir=tmp_path / "8px"), TinyNet(), images(), progress=False)
    train(replace(cfg, out_dir=tmp_path / "vlb", loss="vlb", variance="fixedsmall"), TinyNet(), images(),
          progress=False)
    big = torch.rand(4, 1, 256, 256) * 2 - 1
    train(replace(cfg, out_dir=tmp_path / "256px", batch_size=2), TinyNet(), big, progress=False)
    assert used == ["fixedlarge", "fixedsmall", "fixedsmall"]


def test_a_mean_networks_grid_under_ddp_is_the_single_process_grid(tmp_path, monkeypatch):
    """Each rank runs the network on its share of the grid, below the conversion of its output, so a μ̃-network
    keeps its own mean (not one rebuilt from a clipped x̂_0, 80 levels apart here: this network's μ_θ = x_t
    implies an x̂_0 far outside [-1, 1]). Two ranks, one after the other, with all_gather played by hand."""
    cfg = TrainConfig(T=50, num_samples=4, parameterization="mu", bf16=False, image_size=8)
    s, shape, net = cfg.noise_schedule(), (1, 8, 8), lambda x, t: x
    cpu = torch.device("cpu")
    train_mod._sample_grid(s, net, cfg, shape, cpu, tmp_path / "one.png")
    shares = {}

    def all_gather(out, mine):  # rank 1 runs first and leaves its share; rank 0 then gathers both
        shares.setdefault(1, mine)
        out[0].copy_(mine)
        out[1].copy_(shares[1])

    monkeypatch.setattr(train_mod.dist, "all_gather", all_gather)
    for rank in (1, 0):
        train_mod._sample_grid(s, net, cfg, shape, cpu, tmp_path / "two.png", rank=rank, world=2)
    one, two = (np.asarray(Image.open(tmp_path / name), dtype=float) for name in ("one.png", "two.png"))
    assert one.shape == two.shape and np.abs(one - two).max() <= 1


# Class-conditional training (classifier-free guidance, Ho & Salimans 2022) ---------------------------------------

def labels_seen(config, steps):
    """The labels the network gets in ``steps`` of a digits run: the batch's, or 10 where dropped."""
    from ddpm.batches import step_label_dropout
    from ddpm.data import get_dataset
    data = get_dataset("digits", labels=True)
    seen = set()
    for step in steps:
        y = data.labels[batch_indices(len(data), config.batch_size, config.seed, step)]
        drop = step_label_dropout(config.seed, step, config.batch_size, config.label_dropout)
        seen |= set(torch.where(drop, 10, y).tolist())
    return seen


@pytest.mark.parametrize("loss", ["simple", "vlb"])
def test_a_class_conditional_run_feeds_the_labels_stores_its_classes_and_resumes_bit_for_bit(loss, tmp_path):
    """The tiny UNet on labelled digits: the rows of the label embedding that move are exactly the labels (with the
    null class for the dropped ones) of the batches from step 2 on, so the labels reach the network under either
    loss (in steps 0 and 1 no gradient reaches the embedding: the zero-initialised output layer, then the blocks'
    zero-initialised last convolutions, pass none back until they have moved); the checkpoint holds
    num_classes=10; a run stopped at step 2 and resumed equals one that never stopped."""
    cfg = TrainConfig(class_conditional=True, label_dropout=0.25, loss=loss, T=20, batch_size=4, steps=4, lr=1e-3,
                      warmup=0, log_every=1, sample_every=0, checkpoint_every=0, bf16=False, seed=3,
                      out_dir=str(tmp_path / "a"))
    straight = train(cfg, progress=False)
    torch.manual_seed(cfg.seed)
    initial = checkpoint.build_model(straight.config, 1)
    assert initial.num_classes == straight.model.num_classes == 10
    moved = (straight.model.label_emb.weight != initial.label_emb.weight).any(1).nonzero().flatten().tolist()
    seen = labels_seen(cfg, range(2, 4))
    assert set(moved) == seen and 10 in seen and len(seen) < 11  # the last two: this seed's draws test something

    stopped = train(replace(cfg, out_dir=str(tmp_path / "b"), steps=2), progress=False)
    assert stopped.step == 2
    resumed = train(replace(cfg, out_dir=str(tmp_path / "b"), resume=True), progress=False)
    assert resumed.losses == straight.losses[2:]
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert state["unet"]["num_classes"] == 10 and state["config"]["class_conditional"] is True
    model, config, _ = checkpoint.load_model(tmp_path / "b" / "checkpoint.pt")
    assert model.num_classes == 10 and config.label_dropout == 0.25


def test_label_dropout_replaces_the_stated_share_by_the_null_class(seed):
    """Over 400 steps of 64 labels, the share dropped to the null class is label_dropout to within 5 binomial
    standard errors (a false alarm about 6e-7 per run, for any seed); the other labels are the batch's; the mask
    comes from the step's seed for the global batch, so two ranks' halves make the one-process batch."""
    cfg = TrainConfig(T=20, batch_size=64, flip=False, channels_last=False, label_dropout=0.1, seed=seed)
    g = torch.Generator().manual_seed(seed)
    batch = (torch.zeros(64, 1, 8, 8), torch.randint(0, 10, (64,), generator=g))
    dropped = 0
    for step in range(400):
        y = train_mod._step_inputs(batch, step, cfg, (1, 8, 8), slice(None), "cpu", 10)[3]
        kept = y != 10
        assert torch.equal(y[kept], batch[1][kept])
        dropped += int((~kept).sum())
    n, p = 400 * 64, cfg.label_dropout
    assert abs(dropped / n - p) < 5 * math.sqrt(p * (1 - p) / n), dropped / n
    halves = [train_mod._step_inputs((batch[0][part], batch[1][part]), 7, cfg, (1, 8, 8), part, "cpu", 10)[3]
              for part in (slice(0, 32), slice(32, 64))]
    assert torch.equal(torch.cat(halves), train_mod._step_inputs(batch, 7, cfg, (1, 8, 8), slice(None), "cpu", 10)[3])
    for p, expected in ((0.0, batch[1]), (1.0, torch.full((64,), 10))):
        y = train_mod._step_inputs(batch, 0, replace(cfg, label_dropout=p), (1, 8, 8), slice(None), "cpu", 10)[3]
        assert torch.equal(y, expected)
    assert train_mod._step_inputs(batch, 0, cfg, (1, 8, 8), slice(None), "cpu")[3] is None  # no labels: no draw


def test_class_conditional_training_needs_labelled_data_a_network_with_classes_and_a_dropout_in_0_1(tmp_path):
    from ddpm import UNet
    cases = [
        (TrainConfig(data="celeba", data_dir=str(tmp_path), class_conditional=True), None, None,
         r"^class-conditional training needs labelled data \(digits or cifar10\); 'celeba' has no labels$"),
        (TrainConfig(data=str(tmp_path / "faces.npy"), class_conditional=True), None, None,
         r"needs labelled data \(digits or cifar10\); '.*faces.npy' has no labels"),
        (config(tmp_path, class_conditional=True), UNet.preset("tiny", num_classes=10), images(),
         r"needs labelled data: items \(image, label\)"),
        (config(tmp_path, class_conditional=True), TinyNet(), list(zip(images(), torch.zeros(24, dtype=torch.long))),
         r"needs a network with classes, called model\(x, t, y\)"),
        (TrainConfig(class_conditional=True, label_dropout=1.5), None, None, r"label_dropout must lie in \[0, 1\]"),
        (TrainConfig(label_dropout=-0.1), None, None, r"label_dropout must lie in \[0, 1\] .* got -0.1"),
    ]
    for cfg, net, data, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            train(replace(cfg, out_dir=str(tmp_path / "run"), steps=1, sample_every=0), net, data, progress=False)
        assert "\n" not in str(error.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_class_conditional_is_kept_on_resume_and_label_dropout_may_change(tmp_path):
    cfg = config(tmp_path, steps=2, checkpoint_every=0)
    train(cfg, TinyNet(), images(), progress=False)
    with pytest.raises(ValueError, match=r"class_conditional=False there, True here"):
        train(replace(cfg, resume=True, steps=3, class_conditional=True), TinyNet(), images(), progress=False)
    train(replace(cfg, resume=True, steps=3, label_dropout=0.2), TinyNet(), images(), progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["changes"] == [{"step": 2, "label_dropout": [0.1, 0.2]}]


class LabelRecorder(nn.Module):
    """A class-conditional ε-network that predicts 0 and records the labels it is given."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.labels = []

    def forward(self, x, t, y):
        self.labels.append(y.clone())
        return torch.zeros_like(x)


def test_a_class_conditional_grid_draws_class_i_mod_10_ten_a_row(tmp_path, monkeypatch):
    """Image i is of class i mod 10 (no guidance: the network is called once per step, with those labels), and the
    grid has 10 images a row, so that column k is class k; under DDP each rank gives its rows their labels."""
    cfg = TrainConfig(T=5, num_samples=12, class_conditional=True, bf16=False, image_size=8)
    s, net, cpu = cfg.noise_schedule(), LabelRecorder(), torch.device("cpu")
    train_mod._sample_grid(s, net, cfg, (1, 8, 8), cpu, tmp_path / "grid.png")
    assert len(net.labels) == 5 and all(torch.equal(y, torch.arange(12) % 10) for y in net.labels)
    assert Image.open(tmp_path / "grid.png").size == (10 * (64 + 2) + 2, 2 * (64 + 2) + 2)
    monkeypatch.setattr(train_mod.dist, "all_gather", lambda out, mine: [o.copy_(mine) for o in out])
    net.labels.clear()
    train_mod._sample_grid(s, net, cfg, (1, 8, 8), cpu, tmp_path / "rank1.png", rank=1, world=2)
    assert all(torch.equal(y, torch.arange(6, 12) % 10) for y in net.labels)
