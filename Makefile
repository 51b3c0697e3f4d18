# One-command entry points that work on a fresh clone with python3.11 (or python3) and PyPI.
#   make demo   offline demo: synthetic defects, PatchCore, report in ./anomalens_demo
#   make test   the test suite (installs every extra: dev, hf, export, serve, ray, vfm)
#   make lint   ruff check + format check of src, tests and benchmarks
# torch==2.13.0 is installed FIRST: pinned, pip takes the CPU wheel; a bare "torch" requirement
# resolved together with the package could pull the multi-GB CUDA build instead.

PYTHON ?= $(shell command -v python3.11 >/dev/null 2>&1 && echo python3.11 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: all demo test lint install clean-demo

all: test

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when pyproject.toml or this Makefile changes (or the stamp is missing).
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e '.[dev,hf,export,serve,ray,vfm]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/anomalens demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean-demo:
	rm -rf anomalens_demo
