# Two commands do all set-up on a fresh machine (Python 3.11, pip, and root for FFCV's system libraries):
#   make demo   -- train BYOL+NRCC on the bundled digits on a local Ray, evaluate, report
#   make test   -- the whole test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test lint bench-quick bench-report clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup.sh
	touch $@

demo: setup
	$(BIN)/python -m nrcc_scale.train

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -rs

lint: setup
	$(BIN)/ruff check .

bench-quick: setup
	bash scripts/run_benchmarks.sh --quick

# docs/benchmarks.md from the committed full-run JSON in docs/benchmarks/ (standard library only, no venv needed)
bench-report:
	$(PYTHON) scripts/bench_report.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
