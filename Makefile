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

test: $(STAMP) lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .cache runs
