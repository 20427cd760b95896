"""Shared fixtures. Statistical tests draw a fresh seed on every run (set DDPM_TEST_SEED to replay one)."""

import os
import random

import pytest
import torch

# `make test` runs two pytest workers on two cores: one thread each avoids oversubscription, which made
# small forward/backward passes about 30 times slower.
torch.set_num_threads(1)


@pytest.fixture
def seed(request):
    value = os.environ.get("DDPM_TEST_SEED")
    value = int(value) if value else random.SystemRandom().randrange(2**31)
    print(f"seed: {value}  (replay with DDPM_TEST_SEED={value})")
    return value


@pytest.fixture
def gen(seed):
    """A torch.Generator seeded with this test's seed."""
    return torch.Generator().manual_seed(seed)
