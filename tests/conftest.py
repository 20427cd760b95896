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


def pytest_collection_modifyitems(items):
    """The chapters' Colab-like runs (minutes each) start first, longest first, shared between the two
    halves of the list by their recorded times (each to the half with less so far): ``-n 2 --dist
    worksteal`` hands each worker one half, so both begin with long chapters of about equal total and the
    short tests fill the ends, where stealing balances them. Chapters that share a trained run stay in one
    half, the one that trains first (tests/chapter_times.py)."""
    from chapter_times import longest_first, unit_seconds

    colab = [item for item in items if item.get_closest_marker("colab") and hasattr(item, "callspec")]
    if not colab:
        return
    halves, totals = ([], []), [0.0, 0.0]
    for unit in longest_first({item.callspec.params["chapter"] for item in colab}):
        i = totals.index(min(totals))
        for path in unit:
            halves[i].extend(item for item in colab if item.callspec.params["chapter"] == path)
        totals[i] += unit_seconds(unit)
    rest = [item for item in items if item not in colab]
    k = max(0, len(items) // 2 - len(halves[0]))
    items[:] = halves[0] + rest[:k] + halves[1] + rest[k:]
