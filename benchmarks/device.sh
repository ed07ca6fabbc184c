#!/usr/bin/env bash
# The accelerator check, for a GPU machine lent for minutes: the UNF layer against a pointwise Dense, PES
# inner steps/s on mlp_fashion8, `metatrain train` for 200 outer steps of configs/exp1/base.gin, and one
# learner step at the 84.5k theta, each on the accelerator and on this machine's CPU (JAX_PLATFORMS=cpu),
# in a markdown table on stdout and in $OUT/device.md when OUT is set. The logic is benchmarks/device.py.
#
#   bash benchmarks/device.sh          # both platforms, the issue's sizes (a few minutes on a GPU machine)
#   bash benchmarks/device.sh --cpu    # the CPU alone, tiny sizes: checks that it runs (about a minute)
#
# Python: .venv/bin/python when there is one (`make run`'s setup; on a GPU machine add the CUDA plugin of the
# locked JAX, e.g. `.venv/bin/pip install "jax[cuda12]==0.10.2"`, or the accelerator column runs on the CPU
# and the table says so), else python3, which then needs JAX with its accelerator plugin, flax, optax,
# orbax-checkpoint, etils, tqdm, gin-config and tensorboardX (Ray is not used). Nothing is downloaded.
# Data: Fashion-MNIST (mlp_fashion8) from /usr/share/datasets/fashion-mnist, $UNF_FASHION_MNIST_DIR, or
# data/fashion-mnist (a copy of the four IDX files); Shakespeare (transformer_lm, for the learner's theta)
# from data/, as `make data` leaves it. A measurement that cannot run shows as failed; the others still run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
if [ -z "${UNF_FASHION_MNIST_DIR:-}" ] && [ ! -d /usr/share/datasets/fashion-mnist ] && [ -d data/fashion-mnist ]; then
  export UNF_FASHION_MNIST_DIR="$PWD/data/fashion-mnist"
fi
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
exec "$PY" -m benchmarks.device "$@"
