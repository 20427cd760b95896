"""``python -m ddpm train | sample | evaluate | export``: help, usage errors (exit code 2), config files, an
end-to-end run, and the way from a trained checkpoint to diffusers."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.__main__ import main, parser, read_config_file
from ddpm.checkpoint import load_checkpoint, save_checkpoint
from ddpm.celeba import fake_celeba
from ddpm.train import TrainConfig

FAST = ["--T", "20", "--batch-size", "4", "--sample-every", "0", "--quiet"]


@pytest.mark.parametrize("command, flags", [("train", ["--data-dir", "--no-bf16", "--no-compile", "--resume",
                                                      "--class-conditional", "--label-dropout"]),
                                            ("sample", ["--checkpoint", "--npy", "--no-ema", "--class", "--guidance"]),
                                            ("evaluate", ["--checkpoint", "--num-images", "--split"]),
                                            ("export", ["--checkpoint", "--out", "--no-ema"])])
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
    assert "samples/" not in train.stdout  # --sample-every 0 draws none

    png, npy = tmp_path / "grid.png", tmp_path / "samples.npy"
    assert main(["sample", "--checkpoint", str(ckpt), "--num-samples", "16", "--out", str(png), "--npy", str(npy)]) == 0
    assert Image.open(png).size == (4 * (64 + 2) + 2,) * 2  # 4x4 tiles of 8x8 scaled to 64, 2-pixel padding
    samples = np.load(npy)
    assert samples.shape == (16, 1, 8, 8) and samples.dtype == np.uint8

    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--num-images", "8"]) == 0
    out = capsys.readouterr().out
    value = {name: float(re.search(rf"{re.escape(name)}\s+([-+\d.e]+) ± ", out).group(1))
             for name in ("total", "L_T", "sum L_(t-1), t>=2", "L_0")}
    assert value["total"] > 0 and value["L_T"] > 0 and "on 8 test images of digits" in out
    assert value["total"] == pytest.approx(value["L_T"] + value["sum L_(t-1), t>=2"] + value["L_0"], rel=1e-4)

    assert main(["train", "--resume", "--steps", "8", "--ema-decay", "0.99", *FAST, "--out-dir", str(run)]) == 2
    assert "ema_decay=0.9999 there, 0.99 here" in capsys.readouterr().err
    state = load_checkpoint(ckpt)
    save_checkpoint({**state, "image_shape": [3, 8, 8]}, tmp_path / "other.pt")  # a config its weights do not fit
    assert main(["sample", "--checkpoint", str(tmp_path / "other.pt")]) == 2
    assert "its UNet takes 1x8x8 images, its image shape says 3x8x8" in capsys.readouterr().err


def test_celeba_trains_from_either_layout_on_a_generated_stand_in(tmp_path):
    root = fake_celeba(tmp_path / "celeba", n=10, layout="kaggle")
    argv = ["train", "--data", "celeba", "--data-dir", str(root), "--model", "tiny", "--image-size", "16",
            "--steps", "2", *FAST, "--out-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["image_shape"] == [3, 16, 16] and state["config"]["flip"] is True
    assert torch.isfinite(torch.tensor([float(r.split(",")[1]) for r in
                                        (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]])).all()


# ------------------------------------------------------------------- issue 8: no wasted runs, no tracebacks

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A 2-step digits checkpoint with T=20: sampling it takes a fraction of a second. No warm-up and a large
    lr, so that its ε is far from the all-zero output of a fresh network (about 1 in size, and 0.01 apart
    at t and t - 1: a test of the t offset can see it)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--data", "digits", "--steps", "2", *FAST, "--lr", "0.01", "--warmup", "0",
                 "--out-dir", str(run)]) == 0
    return run / "checkpoint.pt"


def one_line_error(err: str) -> str:
    """The message of a one-line error, after any progress bars (which end in carriage returns)."""
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err and sum(line.startswith("error") for line in lines) == 1, err
    return lines[-1]


@pytest.fixture
def never_sample(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("sampling started before the outputs were checked")
    monkeypatch.setattr("ddpm.sampling.sample", boom)


@pytest.mark.parametrize("flag, path, message", [
    ("--out", "folder", "is a folder"),
    ("--out", "grid", "no file extension"),
    ("--out", "grid.xyz", "cannot write .xyz"),
    ("--out", "a_file/grid.png", "not a folder"),
    ("--npy", "samples.txt", "must end in .npy"),
    ("--npy", "folder", "is a folder"),
    ("--out-dir", "a_file", "not a folder"),
])
def test_sample_checks_its_outputs_before_sampling(ckpt, tmp_path, capsys, never_sample, flag, path, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    start = time.perf_counter()
    assert main(["sample", "--checkpoint", str(ckpt), flag, str(tmp_path / path)]) == 2
    assert time.perf_counter() - start < 1.0
    error = one_line_error(capsys.readouterr().err)
    assert flag in error and message in error


def test_sample_refuses_non_finite_samples_and_writes_nothing(ckpt, tmp_path, capsys):
    state = load_checkpoint(ckpt)
    state["ema"] = {k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in state["ema"].items()}
    save_checkpoint(state, tmp_path / "nan.pt")
    png, npy, folder = tmp_path / "grid.png", tmp_path / "x.npy", tmp_path / "pngs"
    assert main(["sample", "--checkpoint", str(tmp_path / "nan.pt"), "--num-samples", "4", "--out", str(png),
                 "--npy", str(npy), "--out-dir", str(folder)]) == 1
    assert "not finite" in one_line_error(capsys.readouterr().err)
    assert not png.exists() and not npy.exists() and not any(folder.glob("*.png"))
    assert not list(tmp_path.glob("*.partial*"))


def test_sample_draws_in_batches_and_writes_as_it_goes(ckpt, tmp_path, capsys, monkeypatch):
    import ddpm.sampling
    real, sizes = ddpm.sampling.sample, []
    monkeypatch.setattr("ddpm.sampling.sample", lambda s, m, shape, *a, **k: sizes.append(shape[0]) or
                        real(s, m, shape, *a, **k))
    runs = {}
    for n in (70, 64):
        png, npy, folder = tmp_path / f"{n}.png", tmp_path / f"{n}.npy", tmp_path / f"png{n}"
        argv = ["sample", "--checkpoint", str(ckpt), "--num-samples", str(n), "--batch-size", "32",
                "--out", str(png), "--npy", str(npy), "--out-dir", str(folder), "--seed", "3"]
        assert main(argv) == 0
        runs[n] = np.load(npy)
        assert runs[n].shape == (n, 1, 8, 8) and runs[n].dtype == np.uint8
        assert sorted(p.name for p in folder.iterdir()) == [f"{i:06d}.png" for i in range(n)]
        for i in (0, n - 1):
            assert np.array_equal(np.asarray(Image.open(folder / f"{i:06d}.png")), runs[n][i, 0])
        assert Image.open(png).size == (8 * (64 + 2) + 2,) * 2  # the grid shows the first 64 only
        assert f"{n}/{n}" in capsys.readouterr().err  # one bar over all the images
    assert sizes == [32, 32, 6, 32, 32]
    assert np.array_equal(runs[70][:64], runs[64])  # batch k's seed depends on --seed and k only
    assert not list(tmp_path.glob("*.partial*"))


@pytest.mark.parametrize("command", ["train", "sample", "evaluate"])
def test_devices_that_cannot_run_give_one_line(command, ckpt, tmp_path, capsys, monkeypatch):
    argv = ["train", *FAST, "--out-dir", str(tmp_path / "run")] if command == "train" else \
        [command, "--checkpoint", str(ckpt)]
    assert main([*argv, "--device", "bogus"]) == 2
    assert "bogus" in one_line_error(capsys.readouterr().err)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*argv, "--device", "cuda"]) == 2
    assert "no CUDA GPU" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_a_text_file_as_checkpoint_gives_one_line(command, tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("hello, this is not a checkpoint\n")
    assert main([command, "--checkpoint", str(text)]) == 2
    assert str(text) in one_line_error(capsys.readouterr().err)


def test_a_config_whose_top_level_is_not_a_table_gives_one_line(tmp_path, capsys):
    for name, text in {"list.json": "[1, 2]", "number.json": "3"}.items():
        (tmp_path / name).write_text(text)
        assert main(["train", "--config", str(tmp_path / name), "--out-dir", str(tmp_path / "run")]) == 2
        assert "top level" in one_line_error(capsys.readouterr().err)


def test_toml_configs_read_with_tomli_where_tomllib_is_missing(tmp_path, monkeypatch):
    """Python 3.10 has no tomllib: the config reader falls back to the tomli package (same API)."""
    import importlib
    import types

    import ddpm
    real = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    calls = []
    tomli = types.ModuleType("tomli")
    tomli.loads = lambda text: calls.append(text) or real.loads(text)
    tomli.TOMLDecodeError = real.TOMLDecodeError
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now fails, as on Python 3.10
    monkeypatch.setitem(sys.modules, "tomli", tomli)
    monkeypatch.delitem(sys.modules, "ddpm.__main__")
    monkeypatch.setattr(ddpm, "__main__", None, raising=False)
    fresh = importlib.import_module("ddpm.__main__")
    path = tmp_path / "run.toml"
    path.write_text("steps = 3\nlr = 1\n")
    assert fresh.read_config_file(path) == {"steps": 3, "lr": 1.0} and calls == ["steps = 3\nlr = 1\n"]
    path.write_text("steps = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        fresh.read_config_file(path)
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(ValueError, match="pip install tomli"):
        fresh.read_config_file(path)


@pytest.mark.parametrize("command, shown", [("sample", ["[64]", "[the model's own", "[0]", "[auto]", "[128]"]),
                                            ("evaluate", ["[64]", "[test]", "[256]", "[the model's own"])])
def test_sample_and_evaluate_help_shows_defaults(command, shown, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(value in out for value in shown)
    default = parser().parse_args([command]).checkpoint
    assert default == str(Path(TrainConfig.out_dir) / "checkpoint.pt") and f"[{default}]" in out
    readme = Path(__file__).parents[1].joinpath("README.md").read_text().split("## Command line")[1].split("\n## ")[0]
    assert f"reads {default}" in readme and f"writes {Path(default).parent}/" in readme


def interrupt(argv: list[str], started, err_file) -> tuple[int, str]:
    """Run ``python -m ddpm ARGV``, send it SIGINT (Ctrl-C) once ``started()`` holds; its exit code and stderr."""
    with open(err_file, "w") as err:  # a file, not a pipe: a full pipe would stall the progress bars
        # SIGINT back to its default in the child: a shell without job control starts background jobs with
        # SIGINT ignored, the child would inherit that, and Python then never raises KeyboardInterrupt
        proc = subprocess.Popen([sys.executable, "-m", "ddpm", *argv], stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "OMP_NUM_THREADS": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 600  # generous: the test machine may be busy
        while not started() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and started(), Path(err_file).read_text()[-2000:]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    return proc.returncode, Path(err_file).read_text()


def test_ctrl_c_stops_training_with_one_line_and_exit_130(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--data", "digits", "--steps", "100000", *FAST, "--checkpoint-every", "1", "--out-dir", str(run)]
    code, err = interrupt(argv, (run / "checkpoint.pt").exists, tmp_path / "err.txt")
    assert code == 130, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    stopped = re.fullmatch(rf"stopped: at step (\d+); saved the checkpoint of step \1 in {re.escape(str(run))}; "
                           r"continue with `python -m ddpm train .* --resume`", lines[0])
    assert stopped, lines[0]  # the last finished step is saved, and "stopped" is said once (D8)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == int(stopped[1])


def test_ctrl_c_stops_sampling_with_one_line_and_exit_130(ckpt, tmp_path):
    folder = tmp_path / "pngs"
    argv = ["sample", "--checkpoint", str(ckpt), "--num-samples", "1000000", "--batch-size", "2",
            "--out-dir", str(folder), "--out", str(tmp_path / "grid.png")]
    code, err = interrupt(argv, (folder / "000001.png").exists, tmp_path / "err.txt")
    assert code == 130 and "Traceback" not in err, err[-2000:]
    last = [line for line in re.split(r"[\r\n]", err) if line.strip()][-1]
    assert last.startswith("stopped: ") and "of 1000000 samples" in last and str(folder) in last


def test_ctrl_c_stops_evaluate_with_one_line_and_exit_130(ckpt, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("ddpm.evaluate.bits_per_dim", interrupted)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--num-images", "4"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"


def test_sample_and_evaluate_take_a_released_model_folder(tmp_path, capsys, monkeypatch):
    """A folder in diffusers' layout (as google/ddpm-cifar10-32 is on the Hub) works wherever a checkpoint
    does: its own schedule (T=20, not the default 1000) and variance (fixedlarge, not the fallback
    fixedsmall of a folder without a scheduler) come with it, and evaluate asks for --data."""
    import ddpm
    import ddpm.evaluate
    import ddpm.sampling
    torch.manual_seed(0)
    model = ddpm.UNet.preset("tiny", in_channels=1, image_size=8)
    folder = ddpm.save_pretrained(model, tmp_path / "released", ddpm.NoiseSchedule.linear(20), "fixedlarge")
    seen = []
    for module, name in ((ddpm.sampling, "sample"), (ddpm.evaluate, "bits_per_dim")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda s, m, x, v, *a, real=real, **k: seen.append((s.T, v)) or
                            real(s, m, x, v, *a, **k))
    npy = tmp_path / "x.npy"
    assert main(["sample", "--checkpoint", str(folder), "--num-samples", "3", "--out", str(tmp_path / "x.png"),
                 "--npy", str(npy)]) == 0
    assert np.load(npy).shape == (3, 1, 8, 8)
    assert main(["evaluate", "--checkpoint", str(folder), "--data", "digits", "--num-images", "4"]) == 0
    assert "bits/dim on 4 test images of digits" in capsys.readouterr().out
    assert seen == [(20, "fixedlarge")] * 2
    assert main(["evaluate", "--checkpoint", str(folder), "--num-images", "4"]) == 2
    assert "pass --data (digits" in one_line_error(capsys.readouterr().err)


# ------------------------------------------------------------------- train -> export -> diffusers, issue 16-17

def assert_same_samples(ckpt, folder, tmp_path, n: int) -> None:
    """``sample`` draws the same uint8 images from the checkpoint and from its exported folder (same seed)."""
    drawn = {}
    for name, source in (("checkpoint", ckpt), ("folder", folder)):
        drawn[name] = tmp_path / f"{name}.npy"
        assert main(["sample", "--checkpoint", str(source), "--num-samples", str(n), "--seed", "5", "--no-bf16",
                     "--out", str(tmp_path / f"{name}.png"), "--npy", str(drawn[name])]) == 0
    assert np.array_equal(np.load(drawn["checkpoint"]), np.load(drawn["folder"]))


def test_export_computes_what_the_checkpoint_computes_in_ddpm_and_in_diffusers(ckpt, tmp_path, capsys):
    """The exported folder is the checkpoint in another layout: ``sample`` draws the same uint8 samples from
    both for the same seed (bit for bit: the same weights in the same network), and diffusers' UNet2DModel
    gives at its timestep k = t - 1 the ε our network gives at the paper's t, to float32 rounding (the two
    implementations order their sums differently: 1e-5 of the output's scale)."""
    diffusers = pytest.importorskip("diffusers")
    import ddpm
    folder = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(folder)]) == 0
    assert f"wrote {folder}" in capsys.readouterr().out
    assert_same_samples(ckpt, folder, tmp_path, 6)

    ours = ddpm.load(ckpt)
    pipe = diffusers.DDPMPipeline.from_pretrained(folder)
    assert pipe.scheduler.config.num_train_timesteps == ours.schedule.T == 20
    assert pipe.scheduler.config.variance_type == "fixed_large" and ours.variance == "fixedlarge"
    torch.manual_seed(1)
    x, t = torch.randn(6, 1, 8, 8), torch.tensor([1, 2, 7, 13, 19, 20])
    with torch.no_grad():
        mine, theirs = ours.model(x, t), pipe.unet(x, t - 1).sample
    assert mine.abs().max() > 0.1  # not the all-zero output of a fresh network
    assert (mine - theirs).abs().max() <= 1e-5 * mine.abs().max()
    assert (mine - pipe.unet(x, t).sample).abs().max() > 1e-3  # diffusers at t itself: the offset shows


def trained(folder, parameterization: str) -> Path:
    """A 2-step digits checkpoint like ``ckpt``'s, of a network that outputs ``parameterization``'s quantity."""
    assert main(["train", "--data", "digits", "--steps", "2", *FAST, "--lr", "0.01", "--warmup", "0",
                 "--parameterization", parameterization, "--out-dir", str(folder)]) == 0
    return folder / "checkpoint.pt"


@pytest.mark.parametrize("parameterization, prediction_type", [("x0", "sample"), ("v", "v_prediction")])
def test_an_x0_or_v_network_exports_with_its_prediction_type(parameterization, prediction_type, tmp_path, capsys):
    """The folder's scheduler names what the network outputs, and ddpm.load reads it back as the checkpoint's own
    ε-model: the same ε, bit for bit (the same weights, schedule and conversion), and the same samples."""
    import ddpm
    ckpt, folder = trained(tmp_path / "run", parameterization), tmp_path / "exported"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(folder)]) == 0
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == prediction_type
    ours, again = ddpm.load(ckpt), ddpm.load(folder)
    assert ours.parameterization == again.parameterization == parameterization
    assert ours.network.parameterization == again.network.parameterization == parameterization
    torch.manual_seed(1)
    x, t = torch.randn(6, 1, 8, 8), torch.tensor([1, 2, 7, 13, 19, 20])
    with torch.no_grad():
        eps, out = ours.model(x, t), ours.network(x, t)
        assert torch.equal(again.model(x, t), eps)
    assert (eps - out).abs().max() > 0.1  # the ε is not the network's output
    assert_same_samples(ckpt, folder, tmp_path, 4)


def test_a_mean_network_s_export_is_refused_in_one_line(tmp_path, capsys):
    """μ̃ has no diffusers prediction_type: exit code 2, one line that says what to do, nothing written."""
    ckpt = trained(tmp_path / "run", "mu")
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "exported")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("error: ") and "parameterization 'mu'" in error
    assert "train parameterization 'eps', 'x0' or 'v'" in error and not (tmp_path / "exported").exists()


def test_sample_and_evaluate_take_trains_run_folder(ckpt, tmp_path, capsys):
    """``--checkpoint RUN_FOLDER`` (train's --out-dir) finds the run's checkpoint.pt, and the grid goes inside."""
    assert main(["sample", "--checkpoint", str(ckpt.parent), "--num-samples", "2"]) == 0
    assert f"grid to {ckpt.parent / 'samples.png'}" in capsys.readouterr().out
    assert (ckpt.parent / "samples.png").is_file()


def test_samples_of_a_hub_model_land_in_the_current_folder_under_its_name(tmp_path):
    from ddpm.__main__ import default_grid_path
    assert default_grid_path("google/ddpm-cifar10-32") == Path("ddpm-cifar10-32_samples.png")
    (tmp_path / "released").mkdir()
    assert default_grid_path(tmp_path / "released") == tmp_path / "released" / "samples.png"
    assert default_grid_path(tmp_path / "run" / "checkpoint.pt") == tmp_path / "run" / "samples.png"


@pytest.mark.parametrize("argv, message", [
    (["--data", "digits", "--model", "cifar10"], "--image-size 32"),
    (["--data", "JUNK"], "is not a .npy array of images"),
])
def test_train_usage_errors_name_the_fix(argv, message, tmp_path, capsys):
    (tmp_path / "junk.npy").write_text("not an array")
    argv = [str(tmp_path / "junk.npy") if a == "JUNK" else a for a in argv]
    assert main(["train", *argv, *FAST, "--steps", "1", "--out-dir", str(tmp_path / "run")]) == 2
    error = one_line_error(capsys.readouterr().err)
    assert message in error and "allow_pickle" not in error


def test_help_names_every_data_set_and_the_console_script_by_its_name(capsys, monkeypatch):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "cifar10" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "export" in out
    monkeypatch.setattr(sys, "argv", ["/venv/bin/ddpm"])
    assert parser().prog == "ddpm"
    monkeypatch.setattr(sys, "argv", ["/src/ddpm/__main__.py"])
    assert parser().prog == "python -m ddpm"


# ------------------------------------------------------------------- classifier-free guidance

@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    """A 2-step class-conditional digits checkpoint, like ``ckpt``'s."""
    run = tmp_path_factory.mktemp("conditional") / "run"
    assert main(["train", "--data", "digits", "--class-conditional", "--label-dropout", "0.2", "--steps", "2", *FAST,
                 "--lr", "0.01", "--warmup", "0", "--out-dir", str(run)]) == 0
    return run / "checkpoint.pt"


def drawn(checkpoint, tmp_path, name, *flags) -> np.ndarray:
    npy = tmp_path / f"{name}.npy"
    assert main(["sample", "--checkpoint", str(checkpoint), "--num-samples", "3", "--no-bf16", "--out",
                 str(tmp_path / f"{name}.png"), "--npy", str(npy), *flags]) == 0
    return np.load(npy)


def test_sample_draws_a_class_with_guidance_or_the_null_class(conditional, tmp_path):
    """--class 3 --guidance 2 draws with ddpm.classifier_free_guidance(network, 3, 2) (the same uint8 images from
    the same noise), --class alone with w = 0, and no --class the unconditional model, the null class."""
    import ddpm
    from ddpm.batches import step_seed
    state = load_checkpoint(conditional)
    assert state["config"]["class_conditional"] and state["unet"]["num_classes"] == 10
    loaded = ddpm.load(conditional)

    def expected(eps_model):
        g = torch.Generator().manual_seed(step_seed(0, 0))  # sample's noise for --seed 0, batch 0
        x = ddpm.sample(loaded.schedule, eps_model, (3, 1, 8, 8), loaded.variance, generator=g)
        return ddpm.to_uint8(x).numpy()

    guided = drawn(conditional, tmp_path, "guided", "--class", "3", "--guidance", "2")
    assert np.array_equal(guided, expected(ddpm.classifier_free_guidance(loaded.network, 3, 2.0)))
    conditional_only = drawn(conditional, tmp_path, "w0", "--class", "3")
    assert np.array_equal(conditional_only, expected(ddpm.classifier_free_guidance(loaded.network, 3, 0.0)))
    null = drawn(conditional, tmp_path, "null")
    assert np.array_equal(null, expected(loaded.model))
    assert not np.array_equal(guided, conditional_only) and not np.array_equal(conditional_only, null)


@pytest.mark.parametrize("which, flags, message", [
    ("plain", ["--class", "3"], "is not class-conditional, so --class has no meaning: sample without it, or train "
                                "with --class-conditional"),
    ("conditional", ["--class", "10"], "--class 10: .* has classes 0..9"),
    ("conditional", ["--class", "-1"], "--class -1: .* has classes 0..9"),
    ("conditional", ["--guidance", "2"], "--guidance needs --class, the class it guides towards"),
    ("conditional", ["--class", "3", "--guidance", "-1"], "the guidance weight w must be a finite number >= 0"),
])
def test_class_and_guidance_errors_are_one_line_with_exit_code_2(which, flags, message, ckpt, conditional, tmp_path,
                                                                   capsys, never_sample):
    checkpoint = ckpt if which == "plain" else conditional
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.png"), *flags]) == 2
    assert re.search(message, one_line_error(capsys.readouterr().err))


def test_a_class_conditional_checkpoint_exports_with_its_classes(conditional, tmp_path, capsys):
    import ddpm
    folder = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(conditional), "--out", str(folder)]) == 0
    assert "class_labels in 0..9, or 10 for the null class" in capsys.readouterr().out
    assert json.loads((folder / "unet" / "config.json").read_text())["num_class_embeds"] == 11
    ours, again = ddpm.load(conditional), ddpm.load(folder)
    assert again.network.num_classes == 10
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([1, 5, 10, 20]), torch.tensor([0, 3, 9, 10])
    with torch.no_grad():
        assert torch.equal(again.network(x, t, y), ours.network(x, t, y))
