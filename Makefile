# Switchboard: `make run` serves the demo, `make test` runs every test.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

# The first Python >= 3.12 among python3.13, python3.12, python3 and pyenv's versions.
PYTHON ?= $(shell for p in python3.13 python3.12 python3 $$(ls -d $$(pyenv root 2>/dev/null)/versions/3.1[2-9]*/bin/python3 2>/dev/null); do \
	if "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then command -v "$$p"; break; fi; done)

.PHONY: install run test bench chromium clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
		echo "Switchboard needs Python 3.12 or newer, and none was found (tried python3.13, python3.12, python3)."; \
		echo "Install one: 'apt-get install python3.12', 'brew install python@3.12', or 'pyenv install 3.12',"; \
		echo "or name it: make PYTHON=/path/to/python3.12 ..."; \
		exit 1; \
	fi
	@echo "Creating $(VENV) with $(PYTHON)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -r requirements.lock
	@touch $@

run: install
	@DEBUG=$${DEBUG:-1} $(PY) -m config.run

# Browser tests drive the system Chromium; install it from the OS packages when missing.
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null \
		|| [ -n "$$CHROMIUM_PATH" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Chromium for the browser tests (apt-get install chromium)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "The browser tests need Chromium. Install it ('sudo apt-get install chromium', or"; \
		echo "'brew install --cask chromium') or point CHROMIUM_PATH at a Chrome/Chromium binary."; \
		exit 1; \
	fi

test: install chromium
	@DEBUG=$${DEBUG:-1} $(PY) -m config.localdb --throwaway -- $(PY) -m pytest $(PYTEST_ARGS)

bench: install
	@DEBUG=$${DEBUG:-1} $(PY) -m config.localdb --throwaway -- $(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .data .pytest_cache
