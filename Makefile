# Switchboard: `make run` serves the demo, `make test` runs every test.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

# The first Python >= 3.12 among python3.13, python3.12, python3 and pyenv's versions.
PYTHON ?= $(shell for p in python3.13 python3.12 python3 $$(ls -d $$(pyenv root 2>/dev/null)/versions/3.1[2-9]*/bin/python3 2>/dev/null); do \
	if "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then command -v "$$p"; break; fi; done)

.PHONY: install assets run test bench chromium wrk clean

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

# The journey canvas: @antv/x6 and @dagrejs/dagre from package-lock.json, bundled by esbuild
# into static/build/ (git-ignored), with the machine's Node.js. npm ci runs again only when the
# lock file changes, the bundle only when a source or the packages change.
ASSET_SOURCES := $(wildcard static/src/*.js static/src/*.mjs)
NODE_STAMP := node_modules/.switchboard-installed
ASSET_STAMP := static/build/.built

assets: $(ASSET_STAMP)

# Checked only when something has to be installed or bundled: a built bundle needs no Node.js.
define NODE_CHECK
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
		echo "Switchboard builds its journey canvas with Node.js and npm, and they were not found."; \
		echo "Install Node.js 20 or newer with npm ('apt-get install nodejs npm', 'brew install node',"; \
		echo "or from nodejs.org), then run make again."; \
		exit 1; \
	fi
	@if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then \
		echo "Switchboard builds its journey canvas with Node.js 20 or newer; this is Node.js $$(node --version)."; \
		echo "Install a newer one ('brew install node', nodejs.org, or 'nvm install 20'), then run make again."; \
		exit 1; \
	fi
endef

$(NODE_STAMP): package.json package-lock.json
	$(NODE_CHECK)
	@echo "Installing the front-end packages (npm ci)"
	@npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

$(ASSET_STAMP): $(NODE_STAMP) $(ASSET_SOURCES)
	$(NODE_CHECK)
	@echo "Bundling the journey canvas into static/build/"
	@npm run --silent build
	@touch $@

run: install assets
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

test: install assets chromium
	@DEBUG=$${DEBUG:-1} $(PY) -m config.localdb --throwaway -- $(PY) -m pytest $(PYTEST_ARGS)

# The tracking benchmark drives the server with wrk, a compiled load generator, so the client
# does not take the CPU being measured; install it from the OS packages when missing.
wrk:
	@if command -v wrk >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing wrk for the benchmarks (apt-get install wrk)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	else \
		echo "The tracking benchmark needs wrk. Install it ('sudo apt-get install wrk' or 'brew install wrk')."; \
		exit 1; \
	fi

bench: install assets wrk
	@DEBUG=$${DEBUG:-1} $(PY) -m config.localdb --throwaway -- $(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .data .pytest_cache node_modules static/build
