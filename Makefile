# Two commands on a fresh machine (Python 3.11+ with venv):
#   make demo   installs aurora into .venv and runs the tour
#   make test   installs aurora and the test extras into .venv and runs the tests
#   make bench  runs the benchmark suite (a few minutes) against raw PB, Pyro5, RPyC
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Twisted finds plugins in site-packages/twisted/plugins; rebuild its cache.
DROPIN := $(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

.PHONY: demo test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.deps: $(BIN)/python setup.py pyproject.toml
	$(BIN)/python -m pip install --quiet '.[test]'
	touch $@

# A plain (not editable) install of the working tree, every time: the tests
# run twistd and relay processes from the installed package, as a user would.
install: $(VENV)/.deps
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall .
	$(DROPIN)

demo: install
	cd examples && ../$(BIN)/python tour.py

test: install
	$(BIN)/python -m pytest

$(VENV)/.bench: $(VENV)/.deps
	$(BIN)/python -m pip install --quiet '.[bench]'
	touch $@

bench: install $(VENV)/.bench
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info
