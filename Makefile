# The documented entry points. Everything runs in a local virtualenv (.venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch, pinned: an unpinned torch would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH) || $(BIN)/python -m pip install --quiet "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Train the default model on the bundled corpus for two minutes (a sample at each evaluation, in
# runs/demo/samples.jsonl; the loss curves in runs/demo/curves.png), evaluate it, sample from it,
# and write the page that shows what each character cost and what the cells track.
demo: install
	rm -rf runs/demo
	$(BIN)/charrnn train corpora/kjv.txt --run runs/demo --max-time 2m
	$(BIN)/charrnn eval runs/demo
	$(BIN)/charrnn sample runs/demo --prime "1 In the beginning" --length 400 --seed 1
	$(BIN)/charrnn viz runs/demo --html runs/demo/explain.html
	@echo "also in runs/demo: curves.png (loss curves), samples.jsonl (the samples drawn while it trained)"

# Two workers (pytest-xdist), each test file on one of them, so a file's shared fixtures (the runs it
# trains once) are made once; each worker computes with one thread (tests/conftest.py).
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: install
	$(BIN)/ruff check charrnn tests scripts
	$(BIN)/ruff format --check charrnn tests scripts

bench: install
	$(BIN)/python scripts/bench_cpu.py

clean:
	rm -rf $(VENV) runs .pytest_cache
