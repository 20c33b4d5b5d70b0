# One command for each job on a fresh machine:
#   make demo   - create .venv, install telediag, run the demo
#   make test   - create .venv, install telediag with dev tools, lint, type-check, run tests and benchmark smoke
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

$(BIN)/.installed-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

# System libraries the dev extras build against (PortAudio for PyAudio); needs root or sudo.
sysdeps:
	@if ! [ -e /usr/include/portaudio.h ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq portaudio19-dev; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq portaudio19-dev; fi; fi

$(BIN)/.installed-dev: pyproject.toml | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench,audio]'
	touch $@ $(BIN)/.installed-run

.PHONY: sysdeps demo test lint typecheck unit bench-smoke bench

demo: $(BIN)/.installed-run
	$(BIN)/telediag demo

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check .

typecheck: $(BIN)/.installed-dev
	$(BIN)/mypy engine dsp transports

unit: $(BIN)/.installed-dev
	$(BIN)/pytest

bench-smoke: $(BIN)/.installed-dev
	$(BIN)/pytest benchmarks --benchmark-disable -q -p no:cacheprovider

test: lint typecheck unit bench-smoke

bench: $(BIN)/.installed-dev
	$(BIN)/pytest benchmarks --benchmark-only --benchmark-columns=min,median,mean,ops --benchmark-group-by=group
