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
	$(PY) -m pip install -q --no-compile torch==2.13.0
	$(PY) -m pip install -q --no-compile -e '.[dev]'
	# Byte-compiled once, on every core (pip compiles one file at a time: 56 s against 35 s on 2
	# cores). A few test files of torch's target a newer Python; pip skips them too, hence `|| true`.
	$(PY) -m compileall -q -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') > /dev/null || true
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
