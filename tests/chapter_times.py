"""How long each chapter took when it was last executed, and the orders that run the long ones first.

The seconds come from the timestamps Jupyter stores in each cell of the committed notebook (no clock of
our own to keep). ``make test`` starts the chapters longest first (tests/conftest.py), so that the two
pytest workers finish together; ``make book`` adds them to jupyter-cache in :func:`paired` order. Chapters
that ask ``ddpm.book.train`` for the same run are one unit of work for both: under one DDPM_CACHE the first
trains and the next reuses its run, so they must run one after the other, not side by side (where the
second would wait, idle, for the first's lock).

    python tests/chapter_times.py book/[0-9][0-9]_*.ipynb book/appendix_*.ipynb     # prints the paths in paired order
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

# Chapter 10 trains with chapter 7's settings exactly (its training cell says so), so it reuses chapter 7's run.
SHARED_RUNS = (("07_training", "10_epilogue"),)


def _cell_seconds(path: Path) -> list[tuple[str, float]]:
    """(source, seconds) of each executed code cell, from its stored execution timestamps."""
    out = []
    for cell in json.loads(Path(path).read_text(encoding="utf-8"))["cells"]:
        times = cell.get("metadata", {}).get("execution", {})
        start, end = times.get("iopub.execute_input"), times.get("shell.execute_reply")
        if start and end:
            seconds = (datetime.fromisoformat(end.replace("Z", "+00:00"))
                       - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
            out.append(("".join(cell["source"]), seconds))
    return out


def recorded_seconds(path: Path) -> float:
    """The seconds the notebook's code cells ran, summed (0 if none)."""
    return sum(seconds for _, seconds in _cell_seconds(path))


def training_seconds(path: Path) -> float:
    """The seconds of its cells that call ``ddpm.book.train``: what the chapter saves when it reuses a run."""
    return sum(seconds for source, seconds in _cell_seconds(path) if "ddpm.book.train(" in source)


def units(paths) -> list[list[Path]]:
    """The chapters grouped into units of work: those of one SHARED_RUNS entry together, longest first (it
    trains), every other chapter alone."""
    paths = [Path(p) for p in paths]
    grouped = []
    for names in SHARED_RUNS:
        group = sorted((p for p in paths if p.stem in names), key=recorded_seconds, reverse=True)
        if len(group) > 1:
            grouped.append(group)
    taken = {p for group in grouped for p in group}
    return grouped + [[p] for p in paths if p not in taken]


def unit_seconds(unit: list[Path]) -> float:
    """The recorded seconds of a unit, without the training of the chapters that reuse the first one's run."""
    return recorded_seconds(unit[0]) + sum(recorded_seconds(p) - training_seconds(p) for p in unit[1:])


def longest_first(paths) -> list[list[Path]]:
    return sorted(units(paths), key=unit_seconds, reverse=True)


def paired(paths) -> list[Path]:
    """jupyter-cache's parallel executor hands its two processes the notebooks in chunks of two consecutive
    ones (``Pool.map``): a unit of two chapters makes a chunk of its own; the single chapters are paired
    longest with shortest, second longest with second shortest, ...; the chunks go longest first, and a
    chapter left without a partner last, so that every other chunk stays aligned on two."""
    chunks, singles = [], []
    for unit in longest_first(paths):
        if len(unit) > 1:
            chunks.append(unit)
        else:
            singles.append(unit[0])
    while len(singles) > 1:
        chunks.append([singles.pop(0), singles.pop()])
    chunks.sort(key=lambda chunk: sum(unit_seconds(u) for u in units(chunk)), reverse=True)
    return [p for chunk in chunks for p in chunk] + singles


if __name__ == "__main__":
    print(" ".join(str(p) for p in paired(sys.argv[1:])))
