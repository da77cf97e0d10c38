# imagesim: two commands for a newcomer.
#   make demo   set up, fetch the offline sample data, ingest it, run the main job, print where to look
#   make test   set up, lint (make lint) and run the test suite
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3.11
VENV ?= .venv
PIP_FLAGS ?= --disable-pip-version-check --no-input --progress-bar off
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench ui serve clean

setup: $(STAMP)

WEB := imagesim_pipeline/service/web

$(STAMP): pyproject.toml $(WEB)/package-lock.json
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 (or run make PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# pip is pinned: pip >= 24.1 rejects the metadata of solaris 0.4.0, whose wheel holds a sample image.
	$(BIN)/python -m pip install $(PIP_FLAGS) -q "pip==24.0" setuptools wheel 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@echo "Installing imagesim and its pinned dependencies into $(VENV) (torch is large: a few minutes the first time)"
	$(BIN)/python -m pip install $(PIP_FLAGS) -q -e '.[dev]' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 18+ (the search page's Leaflet comes from npm)"; exit 1; }
	@# --ignore-scripts: Leaflet and Swagger UI are static files; no install script may call out
	npm ci --prefix $(WEB) --ignore-scripts --no-audit --no-fund --loglevel=error
	$(BIN)/python -c "import imagesim_pipeline, torch, torchvision, lightning, dagster; print('imagesim ready: torch', torch.__version__, 'torchvision', torchvision.__version__, 'dagster', dagster.__version__)"
	touch $(STAMP)

demo: setup
	$(BIN)/imagesim demo

lint: setup
	$(BIN)/ruff check imagesim_pipeline
	$(BIN)/mypy

test: setup lint
	$(BIN)/imagesim samples fetch
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/bench_discovery.py
	$(BIN)/python benchmarks/bench_osm_pbf.py
	$(BIN)/python benchmarks/bench_chips.py
	$(BIN)/python benchmarks/bench_labels.py
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_index.py
	$(BIN)/python benchmarks/bench_engines.py
	$(BIN)/python benchmarks/bench_quantised_scale.py
	$(BIN)/python benchmarks/bench_retrieval.py
	$(BIN)/python benchmarks/bench_embeddings.py
	$(BIN)/python benchmarks/bench_service.py
	$(BIN)/python benchmarks/bench_delivery_sensor.py
	$(BIN)/python benchmarks/bench_change_pairs.py
	$(BIN)/python benchmarks/bench_change_fusion.py
	$(BIN)/python benchmarks/bench_changes.py

serve: setup
	$(BIN)/imagesim serve

PORT ?= 3000
ui: setup
	$(BIN)/imagesim ui --port $(PORT)

clean:
	rm -rf $(VENV) .dagster data/bucket
