# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= data/demo
DEMO_CUSTOMERS ?= 5000
# `make test` installs Debian's Chromium for the browser test (Playwright cannot download one).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install demo test test-all lint lock clean

$(BIN)/xsell: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(BIN)/xsell

install: $(BIN)/xsell

demo: install
	$(BIN)/xsell demo --customers $(DEMO_CUSTOMERS) --out $(DEMO_DIR)

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null)
	$(BIN)/python -m pytest

test-all: install
	$(BIN)/python -m pytest -m ""

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Re-resolve the pinned lock file from pyproject.toml (needs network to PyPI).
lock:
	rm -rf /tmp/xsell-lock-venv && $(PYTHON) -m venv /tmp/xsell-lock-venv
	/tmp/xsell-lock-venv/bin/pip install --quiet --upgrade "pip>=24"
	/tmp/xsell-lock-venv/bin/pip install --quiet ".[dev]"
	/tmp/xsell-lock-venv/bin/pip freeze --exclude xsell | sort > requirements.lock

clean:
	rm -rf $(VENV) build *.egg-info
