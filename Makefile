# `make book` builds the HTML book; `make test` runs every test. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# The chapters execute two at a time, one torch thread each, into a fresh jupyter-cache that the build
# then reads (execute_notebooks: cache): never stale, and about half the time of a serial execution.
# They are added longest first, each long one paired with a short one (tests/chapter_times.py), so that
# the two processes finish together. All chapters get one fresh seed and one DDPM_CACHE, where chapter 10
# finds the digits model that chapter 7 trained (ddpm.book.train): the two make one chunk, run in turn.
# jupyter-book executes again, with the same seed and runs, any chapter that failed in the cache (jcache itself
# exits 0), so that the failure fails the build; `make book DDPM_SEED=N` replays a seed.
CACHE := _build/.jupyter_cache
RUNS := _build/.ddpm_cache
ifndef DDPM_SEED
DDPM_SEED := $(shell $(PYTHON) -c "import random; print(random.SystemRandom().randrange(2**31))")
endif
BOOK_ENV := OMP_NUM_THREADS=1 DDPM_CACHE=$(abspath $(RUNS)) DDPM_SEED=$(DDPM_SEED)
book: $(STAMP)
	@echo "book seed: $(DDPM_SEED) (replay with make book DDPM_SEED=$(DDPM_SEED))"
	rm -rf $(CACHE) $(RUNS)
	yes | JUPYTERCACHE=$(CACHE) $(BIN)/jcache notebook add \
		$$($(BIN)/python tests/chapter_times.py book/[0-9][0-9]_*.ipynb book/appendix_*.ipynb) >/dev/null
	JUPYTERCACHE=$(CACHE) $(BOOK_ENV) $(BIN)/jcache project execute --executor local-parallel --timeout 900
	$(BOOK_ENV) $(BIN)/jupyter-book build . -W -n --keep-going

# Two pytest workers on two cores, one thread each (notebook kernels included): oversubscribed torch
# threads made small-tensor loops up to 12 times slower. Each chapter runs once, under nbval, in the
# Colab-like test of tests/test_book.py; worksteal keeps both workers busy to the end.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist worksteal tests

clean:
	rm -rf _build
