# The two Quick-start commands. Each creates .venv/ on first use and reinstalls when
# pyproject.toml changes, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench study

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m motorsearch run search_spaces/demo.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.report

study: $(STAMP)
	$(VENV)/bin/python -m experiments.search_efficiency.study
