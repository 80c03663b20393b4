# odeserve: `make run` starts the embedded service, `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# The exact torch build this machine (and CI) installs; pyproject accepts any torch>=2.2 so a user
# with another CUDA build can install the package. Override: make test TORCH_PIN='torch==2.5.1'.
TORCH_PIN ?= torch==2.13.0

.PHONY: run test install browser lint format openapi migrate bench clean
# The browser tests drive Debian's Chromium (never `playwright install`); CI=true fails without it.
CHROMIUM ?= /usr/bin/chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q '$(TORCH_PIN)'
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) browser

browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q chromium; \
	  else \
	    echo "note: the browser tests need Chromium at $(CHROMIUM): sudo apt-get install -y chromium"; \
	    echo "      (they skip without it, and fail with CI=true)"; \
	  fi; }

run: install migrate
	$(BIN)/odeserve up

migrate: install
	$(BIN)/odeserve migrate

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check service workers tests benchmarks
	$(BIN)/ruff format --check service workers tests benchmarks

format: install
	$(BIN)/ruff format service workers tests benchmarks
	$(BIN)/ruff check --fix service workers tests benchmarks

openapi: install
	$(BIN)/python -m openapi.generate

clean:
	rm -rf $(VENV) .pytest_cache
