# The two commands of the README: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install quickstart test lint clean chromium gpu-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: this takes the CPU build; an unpinned torch pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/cemiray quickstart $(if $(FROM_SCRATCH),from_scratch=true) $(ARGS)

# The GPU path measured in one JSON object (on a machine without a GPU: tiny sizes on the CPU).
gpu-check: $(STAMP)
	$(VENV)/bin/cemiray gpu-check $(ARGS)

# The report test renders pages in headless Chromium (Debian's package; needs root or sudo).
chromium:
	@test -x /usr/bin/chromium || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: $(STAMP) chromium
	$(PY) -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check cemiray jobs tests

clean:
	rm -rf runs .pytest_cache
