"""``python -m ddpm train | sample | evaluate``: help, usage errors (exit code 2), config files, an end-to-end run."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.__main__ import main, read_config_file
from ddpm.checkpoint import load_checkpoint, save_checkpoint
from ddpm.celeba import fake_celeba

FAST = ["--T", "20", "--batch-size", "4", "--sample-every", "0", "--quiet"]


@pytest.mark.parametrize("command, flags", [("train", ["--data-dir", "--no-bf16", "--no-compile", "--resume"]),
                                            ("sample", ["--checkpoint", "--npy", "--no-ema"]),
                                            ("evaluate", ["--checkpoint", "--num-images", "--split"])])
def test_every_command_has_help(command, flags, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in flags)


def test_usage_errors_exit_with_code_2(tmp_path, capsys):
    for argv in ([], ["train", "--steps", "many"], ["fly"]):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2
    bad = tmp_path / "bad.toml"
    cases = {
        "unknown data set 'mnist'": ["train", "--data", "mnist"],
        "needs data_dir": ["train", "--data", "celeba"],
        "no CelebA found": ["train", "--data", "celeba", "--data-dir", str(tmp_path / "nowhere")],
        "steps must be a positive integer": ["train", "--steps", "0", *FAST],
        "no checkpoint at": ["sample", "--checkpoint", str(tmp_path / "none.pt")],
        "unknown setting 'stepz'": ["train", "--config", str(bad)],
        "no config file": ["train", "--config", str(tmp_path / "none.toml")],
    }
    bad.write_text("stepz = 3\n")
    for message, argv in cases.items():
        assert main([*argv, "--out-dir", str(tmp_path / "run")] if argv[0] == "train" else argv) == 2, message
        assert message in capsys.readouterr().err
    bad.write_text('steps = "3"\n')
    with pytest.raises(ValueError, match="steps must be int"):
        read_config_file(bad)


def test_flags_override_the_config_file(tmp_path):
    toml, js = tmp_path / "run.toml", tmp_path / "run.json"
    toml.write_text(f'steps = 3\nbatch_size = 4\nT = 20\nlr = 1\nsample_every = 0\nout_dir = "{tmp_path / "run"}"\n')
    js.write_text(json.dumps({"steps": 3, "lr": 1, "flip": False, "model": None}))
    assert read_config_file(js) == {"steps": 3, "lr": 1.0, "flip": False, "model": None}
    assert main(["train", "--config", str(toml), "--steps", "2", "--lr", "3e-4", "--quiet"]) == 0
    config = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["config"]
    assert (config["steps"], config["lr"], config["batch_size"], config["T"]) == (2, 3e-4, 4, 20)


def test_train_sample_evaluate_end_to_end(tmp_path, capsys):
    run, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoint.pt"
    train = subprocess.run([sys.executable, "-m", "ddpm", "train", "--data", "digits", "--steps", "6", *FAST,
                            "--num-samples", "4", "--out-dir", str(run)], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert train.returncode == 0, train.stderr[-2000:]
    assert "trained 6 steps" in train.stdout and ckpt.is_file() and (run / "log.csv").is_file()

    png, npy = tmp_path / "grid.png", tmp_path / "samples.npy"
    assert main(["sample", "--checkpoint", str(ckpt), "--num-samples", "16", "--out", str(png), "--npy", str(npy)]) == 0
    assert Image.open(png).size == (4 * (8 + 2) + 2, 4 * (8 + 2) + 2)  # 4x4 tiles of 8x8 with 2-pixel padding
    samples = np.load(npy)
    assert samples.shape == (16, 1, 8, 8) and samples.dtype == np.uint8

    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--num-images", "8"]) == 0
    out = capsys.readouterr().out
    value = {name: float(re.search(rf"{re.escape(name)}\s+([-+\d.e]+) ± ", out).group(1))
             for name in ("total", "L_T", "sum L_(t-1), t>=2", "L_0")}
    assert value["total"] > 0 and value["L_T"] > 0 and "on 8 test images of digits" in out
    assert value["total"] == pytest.approx(value["L_T"] + value["sum L_(t-1), t>=2"] + value["L_0"], rel=1e-4)

    assert main(["train", "--resume", "--steps", "8", "--lr", "1e-3", *FAST, "--out-dir", str(run)]) == 2
    assert "lr=0.0002 there, 0.001 here" in capsys.readouterr().err
    state = load_checkpoint(ckpt)
    save_checkpoint({**state, "image_shape": [3, 8, 8]}, tmp_path / "other.pt")  # a config its weights do not fit
    assert main(["sample", "--checkpoint", str(tmp_path / "other.pt")]) == 2
    assert "do not fit the 'tiny' UNet" in capsys.readouterr().err


def test_celeba_trains_from_either_layout_on_a_generated_stand_in(tmp_path):
    root = fake_celeba(tmp_path / "celeba", n=10, layout="kaggle")
    argv = ["train", "--data", "celeba", "--data-dir", str(root), "--model", "tiny", "--image-size", "16",
            "--steps", "2", *FAST, "--out-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["image_shape"] == [3, 16, 16] and state["config"]["flip"] is True
    assert torch.isfinite(torch.tensor([float(r.split(",")[1]) for r in
                                        (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]])).all()
