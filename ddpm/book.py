"""What the book's chapters need and a user of the package does not: the one switch between quick mode (a CPU,
minutes) and full mode (the paper's sizes, a GPU), and each run's seed. ``ddpm.book.pick(quick=..., full=...)``."""

from __future__ import annotations

import os
import random

MODES = ("quick", "full")


def run_mode() -> str:
    """``"quick"`` unless the environment variable DDPM_MODE says ``"full"``."""
    mode = os.environ.get("DDPM_MODE", "quick").strip().lower()
    if mode not in MODES:
        raise ValueError(f"DDPM_MODE must be 'quick' or 'full', got {mode!r}")
    return mode


def pick(quick, full):
    """The value for the current run mode: ``pick(quick=2_000, full=800_000)``."""
    return quick if run_mode() == "quick" else full


def seed() -> int:
    """The seed of this run: DDPM_SEED if set, else a fresh random one (the book's checks hold for any)."""
    value = os.environ.get("DDPM_SEED")
    return int(value) if value not in (None, "") else random.SystemRandom().randrange(2**31)
