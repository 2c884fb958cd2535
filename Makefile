# Two entry points: `make demo` (set up, train and evaluate the default model) and `make test`.
# Both create .venv and install what they need; running them again only redoes what changed.
# `make docs` builds the course and reference site into site/; `make docs-serve` previews it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cnnzoo-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist
RUN ?= runs/demo

.PHONY: demo test lint data browser setup clean docs docs-serve

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,export,openvino,docs]'
	touch $(STAMP)

# Debian's dataset-fashion-mnist package holds the original IDX files; install it where apt works.
data:
	@if [ -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: $(FASHION_MNIST)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		sudo apt-get install -y -q dataset-fashion-mnist; \
	else \
		echo "note: could not install dataset-fashion-mnist; put the Fashion-MNIST IDX files in \$$CNNZOO_DATA"; \
	fi

# The explorer's browser tests drive Debian's chromium through chromium-driver (the same
# version by construction); install both where apt works.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "browser: $$(chromium --version 2>/dev/null | head -n1)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		sudo apt-get install -y -q chromium chromium-driver; \
	else \
		echo "note: could not install chromium and chromium-driver; the browser tests need them"; \
	fi

# LeNet-5 on Fashion-MNIST with the time-to-accuracy recipe (src/cnnzoo/recipes/
# lenet5_fashion_mnist.yaml): about a minute on 2 CPU cores, ~91 %.
demo: $(STAMP) data
	$(BIN)/cnnzoo train --model lenet5 --dataset fashion_mnist --output-dir $(RUN) --overwrite

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs/hooks examples

# The tests run every page's code (tests/test_docs.py) and record its outputs and figures in
# docs/figures/, so the site build after them reuses that run instead of repeating it.
# A worker per core (pytest-xdist), at most 4: each holds its own models and datasets in memory.
test: $(STAMP) data browser lint
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4
	$(MAKE) docs

export NO_MKDOCS_2_WARNING := 1

docs: $(STAMP)
	$(BIN)/python -m mkdocs build --strict

docs-serve: $(STAMP)
	$(BIN)/python -m mkdocs serve

clean:
	rm -rf $(VENV) runs .pytest_cache site docs/figures
