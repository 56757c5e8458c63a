# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install with the exact pins in constraints.txt.
# The install is stamped, so a second run reinstalls nothing and starts at once.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pite-installed
PYTEST_ARGS ?=

.PHONY: demo test install doctor bench clean-venv

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pite demo

doctor: $(STAMP)
	$(BIN)/pite doctor

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
