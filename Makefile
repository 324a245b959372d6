# Quick start: `make demo` (set up, generate demo data, run the pipeline) and
# `make test` (set up, run the tests).
SHELL := /bin/bash
VENV ?= .venv
STAMP := $(VENV)/.installed
DEMO_DATA ?= demo_data
DEMO_HOME ?= tfx_home
PYTEST_ARGS ?=

.PHONY: setup demo demo-data test clean

setup: $(STAMP)

$(STAMP): requirements.lock setup.py tools/bootstrap.sh
	bash tools/bootstrap.sh $(VENV)

demo-data: $(STAMP)
	@test -f $(DEMO_DATA)/HAM10000_metadata.csv || $(VENV)/bin/skinlesion demo-data $(DEMO_DATA)

demo: demo-data
	$(VENV)/bin/skinlesion run --data $(DEMO_DATA) --layout ham10000 --home $(DEMO_HOME)

test: $(STAMP)
	$(VENV)/bin/python -m pytest tests $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_DATA) $(DEMO_HOME) .pytest_cache
