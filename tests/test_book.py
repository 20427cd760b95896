"""The book as a product: every chapter follows the book's conventions and runs alone in a fresh environment.

The Colab-like test (marked ``colab``; select it with ``pytest -m colab``, skip it with ``-m "not colab"``)
copies one chapter into an empty folder and runs it under nbval in a new virtual environment that sees
every installed package except ``ddpm``, so the chapter's first cell has to install ``ddpm`` itself, as it
would in a fresh Colab runtime. Nothing is downloaded: the install comes from a copy of this checkout.
"""

from __future__ import annotations

import json
import random
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import nbformat
import pytest
import yaml
from chapter_times import longest_first, paired, recorded_seconds, unit_seconds

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
# the numbered chapters, then the appendices
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb")) + sorted(BOOK.glob("appendix_*.ipynb"))
MAX_BYTES = 2_000_000

INSTALL_CELL = '''\
# Installs the book's package `ddpm` when it is missing (a fresh Colab runtime);
# does nothing otherwise.
import importlib, importlib.util, os, subprocess, sys
if importlib.util.find_spec("ddpm") is None:
    source = os.environ.get("DDPM_SOURCE",
                            "{url}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", source],
                   check=True)
    importlib.invalidate_caches()'''

CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")
EQ_LABEL = re.compile(r"^\$\$\s*\(([^)\s]+)\)\s*$", re.MULTILINE)
EQ_REF = re.compile(r"\{eq\}`([^`]+)`")
SOLUTION = re.compile(r"^(`{3,})\{admonition\} Solution\s*\n:class: dropdown\s*$", re.MULTILINE)


def chapter_ids(path: Path) -> str:
    return path.stem


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def markdown_of(nb) -> str:
    return "\n\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")


def book_texts() -> dict[str, str]:
    """Every page's markdown: the .md pages and the markdown cells of the notebooks."""
    texts = {p.name: p.read_text(encoding="utf-8") for p in sorted(BOOK.glob("*.md"))}
    texts.update({p.name: markdown_of(read(p)) for p in CHAPTERS})
    return texts


def repository_url() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    return config["repository"]["url"]


def test_there_are_chapters():
    assert CHAPTERS, f"no chapter notebooks (NN_slug.ipynb) found in {BOOK}"


# -- conventions, checked on the committed notebooks (fast) -----------------------------------------

@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids)
def test_install_cell_is_the_books_and_points_at_the_repository(chapter):
    cell = read(chapter).cells[1]
    assert cell.cell_type == "code" and "hide-cell" in cell.metadata.get("tags", []), \
        "cell 2 must be the install cell, a code cell tagged hide-cell"
    assert cell.source.strip() == INSTALL_CELL.format(url="ddpm-book @ git+" + repository_url()), \
        "the install cell must be identical in every chapter and install from repository.url of _config.yml"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids)
def test_chapter_opens_with_title_goals_seed_and_mode(chapter):
    cells = read(chapter).cells
    first = cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "cell 1 must start with '# Title'"
    assert "In this chapter you will be able to:" in first.source
    setup = cells[2].source
    assert "ddpm.book.run_mode()" in setup and "ddpm.book.seed()" in setup, "cell 3 must read the run mode and the seed"
    top = "\n".join(c.source for c in cells[:6] if c.cell_type == "markdown")
    assert "quick mode" in top and "DDPM_MODE=full" in top, \
        "a sentence near the top must say the figures come from quick mode and how to switch (DDPM_MODE=full)"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids)
def test_chapter_ends_with_summary_and_exercises_with_folded_solutions(chapter):
    text = markdown_of(read(chapter))
    assert "## Summary" in text and "## Exercises" in text, "a chapter ends with ## Summary and ## Exercises"
    assert text.index("## Summary") < text.index("## Exercises")
    exercises = text[text.index("## Exercises"):]
    n_solutions = len(SOLUTION.findall(exercises))
    assert n_solutions >= 2, f"found {n_solutions} folded solutions; every exercise needs a dropdown solution"
    assert n_solutions == exercises.count("{admonition} Solution"), "every Solution admonition must be a dropdown"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids)
def test_notebook_is_small_and_committed_executed_in_quick_mode(chapter):
    assert chapter.stat().st_size < MAX_BYTES, f"{chapter.name} is {chapter.stat().st_size / 1e6:.1f} MB; keep it under 2 MB"
    nb = read(chapter)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), "commit the notebook executed top to bottom in one run"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"committed outputs contain an error: {errors[0].ename}: {errors[0].evalue}"
    printed = "".join(o.get("text", "") for o in code[1].outputs if o.output_type == "stream")
    assert "run mode: quick" in printed, "commit the notebook executed in quick mode"
    # `make book` and `make test` start the long chapters first by these times (tests/chapter_times.py)
    assert recorded_seconds(chapter) > 0, "commit the notebook with its cells' execution timestamps"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids)
def test_rendered_page_rules(chapter):
    """What the rendered page needs: code that does not scroll sideways, no temporary paths that change every
    run, no single output over 500 kB, no saved widget state (a static page cannot run it), and no control
    characters in the text (a "\\times" written through a Python string becomes a tab and "imes")."""
    nb = read(chapter)
    assert "widgets" not in nb.metadata, "strip the saved widget state from the notebook's metadata"
    for i, cell in enumerate(nb.cells):
        control = sorted({repr(c) for c in cell.source if ord(c) < 32 and c != "\n"})
        assert not control, f"cell {i}: control characters {', '.join(control)} in its source (an unescaped backslash?)"
        if cell.cell_type != "code":
            continue
        long = [line for line in cell.source.splitlines() if len(line) > 88]
        assert not long, f"cell {i}: code lines over 88 characters: {long[0]!r}"
        for output in cell.outputs:
            text = json.dumps(output)
            assert len(text) < 500_000, f"cell {i}: an output of {len(text) / 1e3:.0f} kB; keep each under 500 kB"
            assert "/tmp/" not in text and tempfile.gettempdir() + os.sep not in text, \
                f"cell {i}: a temporary path in the output; print paths relative to the run folder"


def test_every_bibliography_entry_is_cited():
    bib = (BOOK / "references.bib").read_text(encoding="utf-8")
    cited = {key.strip() for text in book_texts().values() for group in CITE.findall(text) for key in group.split(",")}
    unused = sorted(set(re.findall(r"@\w+\s*\{\s*([^,\s]+)\s*,", bib)) - cited)
    assert not unused, f"in book/references.bib but never cited: {unused}"


def test_chapter_orders_put_the_longest_first_pair_it_with_the_shortest_and_keep_shared_runs_together(tmp_path):
    def cell(seconds, source=""):
        return {"cell_type": "code", "source": source, "outputs": [], "execution_count": 1, "metadata": {"execution": {
            "iopub.execute_input": "2026-01-01T00:00:00.000000Z",
            "shell.execute_reply": f"2026-01-01T00:{seconds // 60:02d}:{seconds % 60:02d}.500000Z"}}}

    cells = {name: [cell(seconds), cell(seconds)] for name, seconds in {"a": 5, "b": 300, "c": 40, "d": 1, "e": 100}.items()}
    # chapters 7 and 10 ask ddpm.book.train for the same run: 150 s of training, done once
    cells["07_training"] = [cell(50), cell(150, "result = ddpm.book.train(config)")]
    cells["10_epilogue"] = [cell(150, "result = ddpm.book.train(recipe)"), cell(30)]
    for name, notebook_cells in cells.items():
        (tmp_path / f"{name}.ipynb").write_text(json.dumps({"cells": notebook_cells}), encoding="utf-8")
    paths = sorted(tmp_path.glob("*.ipynb"))
    assert recorded_seconds(tmp_path / "b.ipynb") == 2 * 300.5
    order = longest_first(paths)
    assert [[p.stem for p in unit] for unit in order] == [
        ["b"], ["07_training", "10_epilogue"], ["e"], ["c"], ["a"], ["d"]]
    assert unit_seconds(order[1]) == 50.5 + 150.5 + 30.5   # the second reuses the first's run
    assert [p.stem for p in paired(paths)] == ["b", "d", "07_training", "10_epilogue", "e", "a", "c"]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids)
def test_checked_outputs_exist_and_are_not_random(chapter):
    for cell in read(chapter).cells:
        if cell.cell_type == "code" and cell.source.startswith("# NBVAL_CHECK_OUTPUT"):
            assert cell.outputs, "a # NBVAL_CHECK_OUTPUT cell needs stored output for nbval to compare"
            assert "SEED" not in cell.source and "gen" not in re.findall(r"\w+", cell.source), \
                "never mark cells whose output depends on the random seed with # NBVAL_CHECK_OUTPUT"


def test_table_of_contents_lists_every_chapter_once():
    """The book builds only what _toc.yml names (only_build_toc_files): a chapter left out would vanish."""
    def files(node):
        if isinstance(node, dict):
            return ([node["file"]] if "file" in node else []) + [f for v in node.values() for f in files(v)]
        return [f for v in node for f in files(v)] if isinstance(node, list) else []
    listed = files(yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8")))
    assert len(listed) == len(set(listed)), "a file appears twice in _toc.yml"
    chapters = {str(p.relative_to(ROOT).with_suffix("")) for p in CHAPTERS}
    assert chapters <= set(listed), f"not in _toc.yml: {sorted(chapters - set(listed))}"


def test_every_citation_is_in_the_bibliography():
    bib = (BOOK / "references.bib").read_text(encoding="utf-8")
    keys = re.findall(r"@\w+\s*\{\s*([^,\s]+)\s*,", bib)
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    assert not repeated, f"repeated in book/references.bib (pybtex then drops later entries): {repeated}"
    known = set(keys)
    missing = {f"{page}: {key.strip()}" for page, text in book_texts().items()
               for group in CITE.findall(text) for key in group.split(",") if key.strip() not in known}
    assert not missing, f"cited but not in book/references.bib: {sorted(missing)}"


def test_equation_labels_are_unique_and_every_reference_resolves():
    labels: dict[str, str] = {}
    texts = book_texts()
    for page, text in texts.items():
        for label in EQ_LABEL.findall(text):
            assert label not in labels, f"equation label {label!r} is defined in {labels[label]} and in {page}"
            labels[label] = page
    refs = {(page, re.sub(r".*<(.+)>$", r"\1", ref)) for page, text in texts.items() for ref in EQ_REF.findall(text)}
    dangling = sorted(f"{page}: {ref}" for page, ref in refs if ref not in labels)
    assert not dangling, f"{{eq}} references to undefined labels: {dangling}"


# -- the Colab-like run --------------------------------------------------------------------------------

def site_packages() -> list[str]:
    """The running interpreter's site-packages folders (where torch, nbclient, ... are installed)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def make_venv_without_ddpm(where: Path) -> Path:
    """A virtual environment whose only extra path is our site-packages, listed in a .pth file.

    Folders named in a .pth file are added to sys.path but not scanned for .pth files themselves, so the
    hook of ddpm's editable install never runs there: ``import ddpm`` fails while torch imports. The venv
    has no pip or setuptools of its own (Python 3.11's bundled setuptools 65 would shadow the newer one that
    torch requires); ``python -m pip`` runs the pip found through the .pth file, like any other package.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "_book_test_parent_env.pth").write_text("\n".join(site_packages()) + "\n", encoding="utf-8")
    return python


def copy_of_source(where: Path) -> Path:
    """The installable part of this checkout (its small top-level files and ddpm/), so that pip's in-tree
    build writes its build/ and *.egg-info folders into the copy, not into the checkout."""
    where.mkdir()
    for path in ROOT.iterdir():
        if path.is_file() and path.stat().st_size < 1_000_000:
            shutil.copy2(path, where / path.name)
    shutil.copytree(ROOT / "ddpm", where / "ddpm", ignore=shutil.ignore_patterns("__pycache__"))
    return where


def run_python(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory) -> dict:
    """One DDPM_SEED and one DDPM_CACHE folder for every chapter of this test run, on both pytest workers
    (which share xdist's run id and the parent of their temporary folders): chapter 10 then reuses the
    digits model that chapter 7 trained (``ddpm.book.train``). The seed is new on every run, as a reader's
    would be; DDPM_TEST_SEED replays one."""
    base, run_id = tmp_path_factory.getbasetemp(), os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if os.environ.get("DDPM_TEST_SEED"):
        seed = int(os.environ["DDPM_TEST_SEED"])
    elif run_id:
        seed = int(run_id[:8], 16) % 2**31
    else:
        seed = random.SystemRandom().randrange(2**31)
    return {"DDPM_SEED": str(seed), "DDPM_CACHE": str((base.parent if run_id else base) / "ddpm-cache")}


@pytest.mark.colab
@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids)
def test_chapter_runs_alone_in_a_fresh_environment_that_lacks_ddpm(chapter, tmp_path, monkeypatch, shared_runs):
    work = tmp_path / "runtime"
    work.mkdir()
    shutil.copy(chapter, work / chapter.name)
    python = make_venv_without_ddpm(tmp_path / "venv")

    missing = run_python(python, "import ddpm", work)
    assert missing.returncode != 0 and "No module named 'ddpm'" in missing.stderr, \
        "the fresh environment must not see ddpm before the chapter installs it"
    assert run_python(python, "import torch, matplotlib, ipykernel", work).returncode == 0, \
        "the fresh environment must see the other installed packages"

    source = copy_of_source(tmp_path / "source")
    kernels = tmp_path / "jupyter" / "kernels" / "fresh-venv"
    kernels.mkdir(parents=True)
    env = {
        "DDPM_SOURCE": str(source),      # the install cell installs from the local copy, not from GitHub
        "DDPM_MODE": "quick",
        **shared_runs,                   # one seed and one cache of training runs for all chapters
        "PIP_NO_INDEX": "1",             # nothing may be downloaded
        "PIP_NO_BUILD_ISOLATION": "0",   # pip reads this as --no-build-isolation (its env semantics are inverted)
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    spec = {"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "fresh venv without ddpm", "language": "python", "env": env}
    (kernels / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("PYTHONPATH", raising=False)

    # nbval runs the chapter in that kernel, in the empty folder: the one execution of each chapter in
    # `make test` checks that it runs alone, installs ddpm itself and reproduces its checked outputs.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                          "--nbval-kernel-name", "fresh-venv", "--nbval-cell-timeout", "900", chapter.name],
                         cwd=work, capture_output=True, text=True)
    assert run.returncode == 0, (f"nbval of {chapter.name} in the fresh environment failed (replay with "
                                 f"DDPM_TEST_SEED={shared_runs['DDPM_SEED']}):\n{run.stdout[-6000:]}")

    venv_site = run_python(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])", work).stdout.strip()
    where = run_python(python, "import ddpm; print(ddpm.__file__)", work)
    assert where.returncode == 0, f"ddpm is not importable after the chapter ran: {where.stderr}"
    assert Path(where.stdout.strip()).is_relative_to(venv_site), f"ddpm was imported from {where.stdout.strip()}"
    direct_url = next(Path(venv_site).glob("ddpm_book-*.dist-info")) / "direct_url.json"
    assert json.loads(direct_url.read_text())["url"] == source.as_uri(), "ddpm must come from the local checkout"
