"""Shared fixtures. Statistical tests draw a fresh seed on every run (set DDPM_TEST_SEED to replay one)."""

import os
import random

import pytest
import torch


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
