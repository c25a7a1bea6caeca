# Two commands do all the set-up on a fresh Debian 12 machine (as root):
#   make run    virtualenv + install, then serve proxy.yml on :5000 with data in ./data
#   make test   the Debian packages the tests drive + test dependencies, then every test
# The command line is then .venv/bin/pullcache (make venv installs it without serving).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test bench venv system clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { apt-get update -q && apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

venv: $(VENV)/.installed

system:
	./scripts/setup-system.sh

run: venv
	$(BIN)/pullcache serve -c proxy.yml

# Type check and lint first (seconds), then every test, four at a time: most wait on real processes.
test: system venv
	$(BIN)/mypy
	$(BIN)/ruff check pullcache bench tests
	$(BIN)/python -m pytest -q -ra -n 4

bench: system venv $(VENV)/.bench-installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) data bench/results/*.tmp
