# One command for each job on a fresh machine:
#   make demo   - create .venv, install telediag, run the demo
#   make test   - create .venv, install telediag with dev tools, lint, type-check, run tests and benchmark smoke
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

$(BIN)/.installed-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[report]'
	touch $@

# System packages the tests need: PortAudio (PyAudio builds against it), Debian's chromium
# (browser tests; never `playwright install`), ffmpeg (live UDP video feed) and poppler-utils
# (pdftoppm: the report's PDF rendered to PNG in tests), nodejs (tests/outside_client.mjs: a client
# written from PROTOCOL.md + OUTPUTS.md alone decodes every topic), iproute2 + util-linux (`ip`, `unshare`:
# the Ray tests run in a loopback-only network namespace), gcc (the AOT kernels, engine/aot.py). Needs root or sudo.
SYSPKGS = portaudio19-dev chromium ffmpeg poppler-utils nodejs openssl iproute2 util-linux gcc
sysdeps:
	@if ! [ -e /usr/include/portaudio.h ] || ! [ -x /usr/bin/chromium ] || ! command -v ffmpeg >/dev/null || ! command -v pdftoppm >/dev/null || ! command -v node >/dev/null || ! command -v openssl >/dev/null || ! command -v ip >/dev/null || ! command -v unshare >/dev/null || ! command -v gcc >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSPKGS); fi

$(BIN)/.installed-dev: pyproject.toml | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench,audio,lsl,report,cluster]'
	touch $@ $(BIN)/.installed-run

# Numba kernels compiled ahead of time (engine/aot.py): a C extension built from the signatures the
# engine's own warm-up calls, so a first `telediag run` compiles nothing even with an empty Numba
# cache (issue 18). Rebuilt when a kernel source changes; without a C compiler it is skipped
# (--optional) and the kernels JIT at first use as before.
AOT = engine/_aot_kernels.json
AOT_SRCS = $(wildcard dsp/*.py models/*/*.py engine/stages/*.py engine/stages/*/*.py) engine/aot.py engine/warmup.py engine/default.toml
$(AOT): $(AOT_SRCS) | $(BIN)/.installed-run
	$(BIN)/python -m telediag.engine.aot build --optional

.PHONY: sysdeps demo test lint typecheck unit bench-smoke bench aot

aot: $(AOT)

demo: $(BIN)/.installed-run $(AOT)
	$(BIN)/telediag demo

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check .

typecheck: $(BIN)/.installed-dev
	$(BIN)/mypy engine dsp transports

unit: $(BIN)/.installed-dev $(AOT)
	$(BIN)/pytest

bench-smoke: $(BIN)/.installed-dev $(AOT)
	$(BIN)/pytest benchmarks --benchmark-disable -q -p no:cacheprovider

test: lint typecheck unit bench-smoke

bench: $(BIN)/.installed-dev $(AOT)
	$(BIN)/pytest benchmarks --benchmark-only --benchmark-columns=min,median,mean,ops --benchmark-group-by=group
