# Two commands do all set-up on a fresh machine (Python 3.11, pip, and root for FFCV's system libraries):
#   make demo   -- train BYOL+NRCC on the bundled digits on a local Ray, evaluate, report
#   make test   -- the whole test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test lint bench-quick bench-report gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/setup.sh
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

# The GPU half in one command (benchmarks/gpu_check.py): needs only torch, numpy, scipy and scikit-learn, so
# it runs from the source tree with the venv's Python when there is one, else with $(PYTHON) (e.g. a GPU
# image's preinstalled torch); every optional library that is missing is a "skipped" row.
GPU_CHECK_JSON ?= results/gpu_check.json
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) benchmarks/gpu_check.py --quick --json $(GPU_CHECK_JSON)

# docs/benchmarks.md from the committed full-run JSON in docs/benchmarks/ (standard library only, no venv needed)
bench-report:
	$(PYTHON) scripts/bench_report.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
