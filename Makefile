# Two commands on a fresh machine (Python 3.11+ with venv):
#   make demo   installs aurora into .venv and runs the tour
#   make test   installs the test extras into .venv and runs the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-test: $(BIN)/python setup.py pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed: $(BIN)/python setup.py pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

demo: $(VENV)/.installed
	cd examples && ../$(BIN)/python tour.py

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
