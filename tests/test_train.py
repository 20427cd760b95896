"""The training loop: defaults, data order, EMA, atomic weights-only checkpoints, exact resume, NaN stop, GPU flags."""

import csv
import math
import random
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
from ddpm.train import NonFiniteLossError, TrainConfig, resolve, train


class TinyNet(nn.Module):
    """A small ε-network with a timestep embedding, GroupNorm and dropout, fast on a CPU."""

    def __init__(self, T=50, dropout=0.2, fail_at=None, fail_with=None):
        super().__init__()
        self.emb = nn.Embedding(T + 1, 8)
        self.conv1, self.norm = nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.drop, self.conv2 = nn.Dropout(dropout), nn.Conv2d(8, 1, 3, padding=1)
        self.calls, self.fail_at, self.fail_with, self.dtypes = 0, fail_at, fail_with, set()

    def forward(self, x, t):
        self.calls += 1
        failing = self.fail_at is not None and self.calls >= self.fail_at
        if failing and self.fail_with != "nan":
            raise KeyboardInterrupt("simulated kill")
        h = self.conv1(x)
        self.dtypes.add(h.dtype)  # bfloat16 under autocast
        h = h + self.emb(t)[:, :, None, None]
        out = self.conv2(self.drop(F.silu(self.norm(h))))
        return out * float("nan") if failing else out


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


def test_defaults_follow_the_data_and_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    digits = resolve(TrainConfig(), (1, 8, 8), cpu)
    assert (digits.model, digits.flip, digits.image_size, digits.warmup) == ("tiny", False, 8, 200)
    assert not (digits.bf16 or digits.compile or digits.channels_last or digits.num_workers)
    faces = resolve(TrainConfig(data="celeba"), (3, 64, 64), cuda)
    assert (faces.model, faces.flip, faces.warmup, faces.batch_size) == ("celeba64", True, 5000, 128)
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
    with pytest.raises(ValueError, match=r"another config.*lr=0.001 there, 0.002 here"):
        train(replace(cfg, resume=True, lr=2e-3, steps=3), TinyNet(), data, progress=False)


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
    assert Image.open(grids[-1]).size == (2 * (8 + 2) + 2,) * 2


def test_the_true_bound_as_objective(tmp_path):
    """loss='vlb' trains on T · L_(t-1) (Eq. 5): finite, and it really is another objective than L_simple."""
    data = images()
    simple = train(config(tmp_path / "simple", steps=3, flip=False), TinyNet(dropout=0.0), data, progress=False)
    bound = train(config(tmp_path / "vlb", steps=3, flip=False, loss="vlb"), TinyNet(dropout=0.0), data,
                  progress=False)
    assert all(math.isfinite(v) for v in bound.losses)
    assert bound.losses[0] != simple.losses[0]  # same draws, another loss
    with pytest.raises(ValueError, match="loss must be 'simple' or 'vlb'"):
        train(config(tmp_path / "bad", loss="l1"), TinyNet(), data, progress=False)
