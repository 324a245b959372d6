# Quick start: `make demo` (set up, generate demo data, run the pipeline) and
# `make test` (set up, run the tests).
SHELL := /bin/bash
VENV ?= .venv
STAMP := $(VENV)/.installed
# tflite-support alone, for the tests that run the TFLite Task Library.
TFLITE_VENV ?= .venv-tflite
TFLITE_STAMP := $(TFLITE_VENV)/.installed
DEMO_DATA ?= demo_data
DEMO_HOME ?= tfx_home
PYTEST_ARGS ?=
# make test's processes (pytest-xdist; tests/conftest.py groups the tests that
# share fixtures).  TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

.PHONY: setup flink demo demo-data test test-fast fuzz clean

setup: $(STAMP) $(TFLITE_STAMP)

$(STAMP): requirements.lock setup.py tools/bootstrap.sh
	bash tools/bootstrap.sh $(VENV)

$(TFLITE_STAMP): requirements-tflite.lock tools/bootstrap.sh
	bash tools/bootstrap.sh $(TFLITE_VENV) requirements-tflite.lock

# A local Flink 1.19.1 and Beam's Flink job server in build/flink, pinned by
# sha256 (tools/flink_install.sh; tools/flink_cluster.sh start|stop|status
# runs the cluster).  Without Java or Maven the Flink tests skip, saying so,
# except under CI=true, where this fails.
flink: $(STAMP)
	@bash tools/flink_install.sh $(VENV)/bin/python; rc=$$?; \
	  if [ $$rc = 3 ] && [ "$${CI:-}" != true ]; then \
	    echo "WARNING: the Flink tests will be skipped"; \
	  elif [ $$rc != 0 ]; then exit $$rc; fi

demo-data: $(STAMP)
	@test -f $(DEMO_DATA)/HAM10000_metadata.csv || $(VENV)/bin/skinlesion demo-data $(DEMO_DATA)

demo: demo-data
	$(VENV)/bin/skinlesion run --data $(DEMO_DATA) --layout ham10000 --home $(DEMO_HOME)

# Headless Chromium for the HTML report / try-it page tests (they skip, saying
# so, where it cannot be installed).
BROWSER_PACKAGES := chromium chromium-driver

test: $(STAMP) $(TFLITE_STAMP) flink
	@bash tools/apt_packages.sh $(BROWSER_PACKAGES) || echo "WARNING: browser tests will be skipped"
	SKINLESION_TFLITE_PYTHON=$(abspath $(TFLITE_VENV))/bin/python \
	  $(VENV)/bin/python -m pytest tests -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The tests that train no model and run no pipeline (tests/conftest.py,
# FAST_MODULES): under 3 minutes, for every commit.
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest tests -m fast $(PYTEST_ARGS)

# The long fuzz run of ingestion's image check (make test runs a bounded one).
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	$(VENV)/bin/python benchmarks/fuzz_images.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(DEMO_DATA) $(DEMO_HOME) .pytest_cache
