# Two commands on a fresh machine (Python 3.11+ with venv):
#   make demo   installs aurora into .venv and runs the tour
#   make test   installs aurora and the test extras into .venv, type-checks
#               the package, builds the API reference and runs the tests
#   make docs   builds the API reference, docs/api/index.html, from the docstrings
#   make bench  runs the benchmark suite (a few minutes) against raw PB, Pyro5, RPyC
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Twisted finds plugins in site-packages/twisted/plugins; rebuild its cache.
DROPIN := $(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' aurora/_version.py)
# Any pydoctor warning (a docstring it cannot parse, a link it cannot
# resolve) fails `make docs`, and so `make test`.
DOCSFLAGS ?= -W

.PHONY: demo test test-oldest typecheck docs bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.deps: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet .
	touch $@

$(VENV)/.testdeps: $(VENV)/.deps
	$(BIN)/python -m pip install --quiet '.[test]'
	touch $@

# A plain (not editable) install of the working tree, every time: the tests
# run twistd and relay processes from the installed package, as a user would.
install: $(VENV)/.deps
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall .
	$(DROPIN)

demo: install
	cd examples && ../$(BIN)/python tour.py

# mypy checks the working tree, as configured in pyproject.toml [tool.mypy].
typecheck: $(VENV)/.testdeps
	$(BIN)/python -m mypy

$(VENV)/.docs: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet '.[docs]'
	touch $@

# pydoctor reads the source (it imports nothing) and fetches nothing; its
# settings are in pyproject.toml [tool.pydoctor].
docs: $(VENV)/.docs
	rm -rf docs/api
	$(BIN)/pydoctor $(DOCSFLAGS) --project-version=$(VERSION) aurora

test: install $(VENV)/.testdeps typecheck docs
	$(BIN)/python -m pytest

# The suite again on the oldest supported Twisted (.ci/oldest.txt), in a
# virtualenv of its own: the type check and the docs do not depend on it.
OLDEST ?= .venv-oldest
test-oldest:
	PIP_CONSTRAINT=$(CURDIR)/.ci/oldest.txt $(MAKE) install $(OLDEST)/.testdeps VENV=$(OLDEST)
	$(OLDEST)/bin/python -c "import twisted; print('Twisted', twisted.__version__)"
	$(OLDEST)/bin/python -m pytest

$(VENV)/.bench: $(VENV)/.deps
	$(BIN)/python -m pip install --quiet '.[bench]'
	touch $@

bench: install $(VENV)/.bench
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(OLDEST) build *.egg-info docs/api .mypy_cache
