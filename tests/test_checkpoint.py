"""Checkpoints: a full disk says so, a corrupted or foreign file is a one-line error, temporaries left by a
kill are removed, the file mode follows the umask, and checkpoint.py does not import the training loop."""

import ast
import errno
import io
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import ddpm.checkpoint as checkpoint
from ddpm.checkpoint import DiskFullError, load_checkpoint, load_model, save_checkpoint
from ddpm.train import TrainConfig, train

GOOD = {"step": 1, "model": {"w": torch.arange(1000.0)}, "ema": {"w": torch.full((250,), 1.2345)}, "config": {}}


class FullDisk(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes."""

    room = 300

    def write(self, b):
        if self.tell() + len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(b)


def assert_kept(path):
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], GOOD["model"]["w"])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the temporary is gone


def test_a_full_disk_is_named_with_the_space_needed_and_the_old_checkpoint_kept(tmp_path, monkeypatch):
    """torch.save turns the OSError of a full disk into a RuntimeError ("unexpected pos"): still named."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(GOOD, path)
    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: FullDisk(fd, "wb"))
    with pytest.raises(DiskFullError) as caught:
        save_checkpoint({**GOOD, "step": 2}, path)
    message = str(caught.value)
    assert message.startswith(f"the disk is full: saving {path} needs about 0.0 MB and ")
    assert "MB are free; the previous checkpoint is kept" in message and "\n" not in message
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert_kept(path)


def test_a_plain_enospc_is_a_disk_full_error_too(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(GOOD, path)

    def no_space(obj, f):
        f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(DiskFullError, match=r"needs about 0\.0 MB"):
        save_checkpoint({**GOOD, "model": {"w": torch.zeros(10)}}, path)
    monkeypatch.undo()
    assert_kept(path)


def test_other_write_errors_pass_through(tmp_path, monkeypatch):
    def broken(obj, f):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(OSError, match="I/O error") as caught:
        save_checkpoint(GOOD, tmp_path / "checkpoint.pt")
    assert not isinstance(caught.value, DiskFullError)


def test_flipped_bytes_are_found_by_the_checksum(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(GOOD, path)
    raw = bytearray(path.read_bytes())
    at = raw.find(torch.full((16,), 1.2345).numpy().tobytes())  # inside the EMA weights
    assert at > 0
    raw[at:at + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="is corrupted: its contents do not match the SHA-256") as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_a_checkpoint_round_trips_with_its_checksum(tmp_path, gen):
    state = {"step": 3, "model": {"w": torch.randn(4, 3, 2, 2, generator=gen).to(memory_format=torch.channels_last),
                                  "h": torch.randn(5, generator=gen).bfloat16()},
             "ema": {}, "config": {"lr": 1e-3, "data_dir": None}, "optimizer": {"state": {0: {"step": torch.ones(())}}}}
    save_checkpoint(state, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["sha256"] == checkpoint.checksum(state) and torch.equal(loaded["model"]["h"], state["model"]["h"])
    assert checkpoint.checksum({**state, "step": 4}) != loaded["sha256"]


@pytest.mark.parametrize("loader", [load_checkpoint, load_model])
def test_a_text_file_is_a_one_line_error(tmp_path, loader):
    path = tmp_path / "notes.pt"
    path.write_text("these are my notes, not a checkpoint\n" * 20)
    with pytest.raises(ValueError, match="is not a readable checkpoint") as caught:
        loader(path)
    assert "\n" not in str(caught.value)


def test_checkpoint_pt_gets_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o027)
    try:
        save_checkpoint(GOOD, tmp_path / "checkpoint.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "checkpoint.pt").stat().st_mode & 0o777 == 0o640


def test_a_run_removes_the_temporaries_a_kill_left(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".checkpoint.pt.k2j3abcd.tmp", out / ".log.csv.q8x1.tmp"]
    others = [out / "notes.tmp", out / ".checkpoint.pt.bak", out / "other.pt"]
    for p in stale + others:
        p.write_bytes(b"x" * 10)
    data = torch.rand(8, 1, 8, 8) * 2 - 1
    train(TrainConfig(T=10, batch_size=4, steps=1, sample_every=0, out_dir=str(out)), dataset=data, progress=False)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)


def test_checkpoint_py_does_not_import_the_training_loop():
    tree = ast.parse((Path(checkpoint.__file__)).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "train" not in imported and "config" in imported


def test_a_resumed_run_builds_the_network_its_checkpoint_was_trained_as(tmp_path):
    """A checkpoint stores its UNet's architecture: a new run's preset is the original's network (tf_same
    padding, fed t - 1). One written before checkpoints stored it (no "unet" entry) was trained as presets then
    were, symmetric and fed t: it resumes, and loads, as that network, and stores it from then on."""
    data = torch.rand(8, 1, 8, 8) * 2 - 1
    cfg = TrainConfig(T=10, batch_size=4, steps=1, sample_every=0, out_dir=str(tmp_path / "new"))
    train(cfg, dataset=data, progress=False)
    state = load_checkpoint(tmp_path / "new" / "checkpoint.pt")
    assert (state["unet"]["downsample_padding"], state["unet"]["t_offset"]) == ("tf_same", 1)
    resumed = train(replace(cfg, steps=2, resume=True), dataset=data, progress=False)
    assert (resumed.model.config["downsample_padding"], resumed.model.t_offset) == ("tf_same", 1)

    old = tmp_path / "old" / "checkpoint.pt"
    save_checkpoint({k: v for k, v in state.items() if k != "unet"}, old)
    resumed = train(replace(cfg, steps=2, resume=True, out_dir=str(old.parent)), dataset=data, progress=False)
    assert (resumed.model.config["downsample_padding"], resumed.model.t_offset) == ("symmetric", 0)
    assert (resumed.ema.config["downsample_padding"], resumed.ema.t_offset) == ("symmetric", 0)
    state = load_checkpoint(old)
    assert (state["step"], state["unet"]["downsample_padding"], state["unet"]["t_offset"]) == (2, "symmetric", 0)
    model, _, _ = load_model(old)
    assert (model.config["downsample_padding"], model.t_offset) == ("symmetric", 0)


def test_a_checkpoint_from_before_class_labels_loads_and_resumes_as_unconditional(tmp_path):
    """A checkpoint written before UNet took num_classes and TrainConfig took class_conditional and label_dropout
    (none of the three keys) loads and resumes as the unconditional network it is; a new one stores them."""
    data = torch.rand(8, 1, 8, 8) * 2 - 1
    cfg = TrainConfig(T=10, batch_size=4, steps=1, sample_every=0, out_dir=str(tmp_path))
    train(cfg, dataset=data, progress=False)
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    assert state["unet"]["num_classes"] is None and state["config"]["class_conditional"] is False
    old_config = {k: v for k, v in state["config"].items() if k not in ("class_conditional", "label_dropout")}
    save_checkpoint({**state, "unet": {k: v for k, v in state["unet"].items() if k != "num_classes"},
                     "config": old_config}, path)
    model, config, _ = load_model(path)
    assert model.num_classes is None and model.label_emb is None and not config.class_conditional
    resumed = train(replace(cfg, steps=2, resume=True), dataset=data, progress=False)
    assert resumed.step == 2 and resumed.model.num_classes is None
