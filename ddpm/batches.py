"""Which images, flips, timesteps, noise and dropped labels training step k uses: a function of (seed, k) alone.

That is what makes a resumed run exact (nothing to restore but the step) and what lets several
processes share one global batch: each rank takes its slice of the same draws, so the global batch,
and its noise, are the same for any number of processes. The data order is a fresh permutation of
the data set per epoch (seeded by (seed, epoch)), read as one endless stream; step k's global batch
is positions kB, …, kB + B − 1 of it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


def step_seed(*keys: int) -> int:
    """A 64-bit seed mixing the non-negative integers ``keys`` (seed, step, stream) with numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])


@lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, epoch, 0)))


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The data indices of step ``step``'s global batch (steps count from 0): positions step·B, …, step·B + B − 1
    of the stream of per-epoch permutations, so each epoch visits every example once."""
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs = pos // n
    return torch.cat([_epoch_order(n, seed, int(e))[pos[epochs == e] % n] for e in epochs.unique()])


class StepBatches(torch.utils.data.Sampler):
    """This rank's slice of each global batch from step ``start`` to ``stop`` (a DistributedSampler by steps)."""

    def __init__(self, n, batch_size, seed, start, stop, rank=0, world_size=1):
        self.n, self.B, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.part = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield batch_indices(self.n, self.B, self.seed, step)[self.part].tolist()


def step_noise(seed: int, step: int, T: int, batch_size: int, shape, part: slice = slice(None), device="cpu"):
    """Step ``step``'s t ~ U{1, …, T}, ε ~ N(0, I) of ``shape`` per image, and coin flips (whether to mirror
    each image), drawn for the whole global batch on ``device`` and sliced to this rank's ``part``."""
    g = torch.Generator(device).manual_seed(step_seed(seed, step, 1))
    t = torch.randint(1, T + 1, (batch_size,), generator=g, device=device)[part]
    flip = (torch.rand(batch_size, generator=g, device=device) < 0.5)[part]
    noise = torch.randn((batch_size, *shape), generator=g, device=device)[part]
    return t, noise, flip


def step_label_dropout(seed: int, step: int, batch_size: int, p: float, part: slice = slice(None), device="cpu"):
    """Step ``step``'s label dropout: which images train as the null class, each with probability ``p`` (Ho &
    Salimans 2022), drawn for the whole global batch on ``device`` (from a stream of its own, so that a run
    without labels draws nothing more) and sliced to this rank's ``part``."""
    g = torch.Generator(device).manual_seed(step_seed(seed, step, 3))
    return (torch.rand(batch_size, generator=g, device=device) < p)[part]
