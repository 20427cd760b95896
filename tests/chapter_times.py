"""How long each chapter took when it was last executed, and the orders that run the long ones first.

The seconds come from the timestamps Jupyter stores in each cell of the committed notebook (no clock of
our own to keep). ``make test`` starts the chapters longest first (tests/conftest.py), so that the two
pytest workers finish together; ``make book`` adds them to jupyter-cache in :func:`paired` order.

    python tests/chapter_times.py book/[0-9][0-9]_*.ipynb book/appendix_*.ipynb     # prints the paths in paired order
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path


def recorded_seconds(path: Path) -> float:
    """The seconds the notebook's code cells ran, summed, from their stored execution timestamps (0 if none)."""
    total = 0.0
    for cell in json.loads(Path(path).read_text(encoding="utf-8"))["cells"]:
        times = cell.get("metadata", {}).get("execution", {})
        start, end = times.get("iopub.execute_input"), times.get("shell.execute_reply")
        if start and end:
            total += (datetime.fromisoformat(end.replace("Z", "+00:00"))
                      - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
    return total


def longest_first(paths) -> list[Path]:
    return sorted(map(Path, paths), key=recorded_seconds, reverse=True)


def paired(paths) -> list[Path]:
    """Longest, shortest, second longest, second shortest, ...: jupyter-cache's parallel executor hands
    its two processes the notebooks in chunks of two consecutive ones (``Pool.map``), so each chunk pairs
    a long chapter with a short one and the longest starts first."""
    order = longest_first(paths)
    out = []
    while order:
        out.append(order.pop(0))
        if order:
            out.append(order.pop())
    return out


if __name__ == "__main__":
    print(" ".join(str(p) for p in paired(sys.argv[1:])))
