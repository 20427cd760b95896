"""How often the unit tests fail by chance: the whole unit-test suite (every test file but the chapters' runs
in tests/test_book.py and the two-process test_ddp.py, which draws no statistics) once per seed, with
DDPM_TEST_SEED set, so that every test that draws random numbers through the `seed` or `gen` fixture
(tests/conftest.py) draws a different set each run. One line of JSON per seed: the tests that failed.

    OMP_NUM_THREADS=1 python benchmarks/unit_test_seeds.py --seeds 0 40 --out benchmarks/unit_test_seeds.jsonl

A test that fails k times in n seeds has a false-alarm rate of about k/n (none in n: below 3/n at 95%).
Two processes can share the seeds between them (--seeds 0 20 and --seeds 20 40, one file each).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORED = ("tests/test_book.py", "tests/test_ddp.py")


def run_seed(seed: int) -> dict:
    """One pass of the unit tests with DDPM_TEST_SEED=seed: what passed, failed and was skipped."""
    env = dict(os.environ, DDPM_TEST_SEED=str(seed), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as base:
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
                              f"--basetemp={base}/t", *(f"--ignore={p}" for p in IGNORED), "tests"],
                             cwd=ROOT, env=env, capture_output=True, text=True)
    tail = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    counts = {key: int(n) for n, key in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail)}
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", run.stdout, re.M)))
    return {"seed": seed, "passed": counts.get("passed", 0), "failed": failed,
            "skipped": counts.get("skipped", 0), "returncode": run.returncode,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs=2, default=(0, 40), metavar=("FIRST", "END"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "unit_test_seeds.jsonl")
    args = parser.parse_args()
    for seed in range(*args.seeds):
        row = run_seed(seed)
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
