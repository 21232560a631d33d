# Two entry points for a fresh machine with python3 (>= 3.11) and make:
#   make demo   the main job on the embedded synthetic dataset
#   make test   lint + the test suite
# Both create (or reuse) .venv and install the package with what it needs.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: demo test lint venv clean bench

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/hpa-jax demo --workdir $(DEMO_DIR)

lint: $(STAMP)
	$(BIN)/ruff check hpa_jax tests configs
	$(BIN)/ruff format --check hpa_jax tests configs

# Two workers, each taking whole test files (their module fixtures train once) in the order
# tests/conftest.py gives them, the longest first: the suite is mostly single-threaded XLA
# compilation, so the two workers keep both cores busy.
test: $(STAMP) lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

clean:
	rm -rf $(VENV) .cache runs
