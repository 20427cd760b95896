"""DistributedDataParallel on a CPU: ``torchrun --nproc_per_node 2 -m ddpm train`` with the gloo backend.

Two processes share a global batch of 8 (4 each). Their replicas must stay bit-identical, and they must
match one process training on the whole batch up to float32 rounding. The noise, t and images of the
global batch are the same for any number of processes (drawn for the whole batch, then sliced), but the
gradient is averaged in another order: the mean of two 4-example means instead of one 8-example mean.
That changes the last bits of each gradient entry, and Adam, which divides by √v + ε, turns an absolute
change δ of a near-zero entry into an update change of up to lr·δ/ε. Measured over 30 seeds (4 steps,
lr = 2e-4, the tiny UNet on digits, same arithmetic as DDP in one process): max |Δθ| ≤ 2.6e-7, two float32
ulps of a unit weight. We allow 1e-5: forty times that, yet 60 times smaller than how far the weights
move in these 4 steps (6e-4 to 7e-4), so a wrong batch split, unsynchronised gradients or noise drawn per rank
(all of which change updates by about lr) fail it.
"""

import csv
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from ddpm.checkpoint import load_checkpoint
from ddpm.train import TrainConfig, train


# float32 (bf16=False): the comparison is of DDP's arithmetic, and in bf16, the default on CPUs that run it
# natively, two half batches round differently from one whole batch (measured: 2.9e-4 apart after 4 steps).
SETTINGS = dict(data="digits", model="tiny", dropout=0.0, T=50, batch_size=8, steps=4, warmup=2,
                log_every=1, sample_every=4, num_samples=4, checkpoint_every=0, bf16=False)

# Runs the real command line under torchrun and also saves each rank's weights, which the CLI does not, the
# batch sizes its network saw while sampling (without gradients), and when it built the data set: rank 0's
# takes half a second more, as a download would, and the other rank must start only after it is done.
CAPTURE = """
import os, sys, time, torch
import ddpm.__main__ as cli
import ddpm.train as loop
from ddpm.unet import UNet
built, real_get_dataset = [], loop.get_dataset
def get_dataset(*args, **kwargs):
    began = time.monotonic()
    if os.environ["RANK"] == "0":
        time.sleep(0.5)
    dataset = real_get_dataset(*args, **kwargs)
    built.append([began, time.monotonic()])
    return dataset
loop.get_dataset = get_dataset
sampled, real_forward = [], UNet.forward
def forward(self, x, t):
    if not torch.is_grad_enabled():
        sampled.append(x.shape[0])
    return real_forward(self, x, t)
UNet.forward = forward
real_train = cli.train
def train(*args, **kwargs):
    result = real_train(*args, **kwargs)
    state = {"model": result.model.state_dict(), "ema": result.ema.state_dict(), "sampled": sampled, "built": built}
    torch.save(state, os.path.join(result.out_dir, f"rank{os.environ['RANK']}.pt"))
    return result
cli.train = train
sys.exit(cli.main(sys.argv[1:]))
"""


def flags(settings: dict) -> list[str]:
    def flag(k, v):
        name = k.replace("_", "-")
        return [f"--{name}" if v else f"--no-{name}"] if isinstance(v, bool) else [f"--{name}", str(v)]
    return [part for k, v in settings.items() for part in flag(k, v)]


def test_two_processes_keep_identical_replicas_and_match_one_process(tmp_path, seed):
    settings = {**SETTINGS, "seed": seed}
    script = tmp_path / "capture.py"
    script.write_text(CAPTURE)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "train", *flags(settings), "--out-dir", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for part in ("model", "ema"):
        assert all(torch.equal(ranks[0][part][k], ranks[1][part][k]) for k in ranks[0][part])
    (began_0, done_0), = ranks[0]["built"]
    (began_1, done_1), = ranks[1]["built"]
    assert began_0 < done_0 <= began_1 < done_1  # rank 0 builds (downloads) the data first, then the others

    with open(out / "log.csv", newline="") as f:  # rank 0 alone writes the log and the checkpoint
        assert [int(row[0]) for row in list(csv.reader(f))[1:]] == [1, 2, 3, 4]
    saved = load_checkpoint(out / "checkpoint.pt")
    assert saved["step"] == 4 and all(torch.equal(saved["model"][k], ranks[0]["model"][k]) for k in saved["model"])

    # The sample grid: each rank ran the network on its 2 of the 4 images, 50 times (T = 50), and the
    # gathered grid is the one a single process draws (same noise), up to the float32 rounding above.
    assert ranks[0]["sampled"] == ranks[1]["sampled"] == [2] * 50

    single = train(TrainConfig(**settings, out_dir=str(tmp_path / "one")), progress=False)
    grids = [np.asarray(Image.open(d / "samples" / "step_0000004.png"), dtype=float) for d in (out, tmp_path / "one")]
    print(f"grid: max |DDP - single process| = {np.abs(grids[0] - grids[1]).max()} levels of 255")
    assert grids[0].shape == grids[1].shape and np.abs(grids[0] - grids[1]).max() <= 1
    for part, net in (("model", single.model), ("ema", single.ema)):
        one = net.state_dict()
        diff = max((ranks[0][part][k] - one[k]).abs().max().item() for k in one)
        moved = max((ranks[0][part][k] - init).abs().max().item() for k, init in _initial_weights(settings).items())
        print(f"{part}: max |DDP - single process| = {diff:.3g}; max move from the initial weights = {moved:.3g}")
        assert diff < 1e-5 and moved > 50 * 1e-5


def _initial_weights(settings):
    from ddpm.train import build_model, resolve

    config = resolve(TrainConfig(**settings), (1, 8, 8), torch.device("cpu"))
    torch.manual_seed(config.seed)
    return build_model(config, 1).state_dict()
