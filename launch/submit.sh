#!/usr/bin/env bash
# Submits a meta-training run to a running Ray cluster as a Ray job (`ray job submit`).
#
# Usage: launch/submit.sh CONFIG NAME [extra `metatrain train` flags...]
#   RAY_ADDRESS=http://HEAD_IP:8265 launch/submit.sh configs/mlp_unf.gin mlp_unf \
#     --gin_bindings TrainConfig.num_workers=16
# The working tree is uploaded (without .venv, .git, runs/ and other gitignored files such as data/) and
# becomes the job's working directory on every node. The cluster must have the project's dependencies
# and datasets (UNF_DATA_DIR, UNF_FASHION_MNIST_DIR): launch/cluster_*.yaml install and set them.
# Checkpoints go to WORKDIR on the head node (default: runs/NAME inside the job's working directory,
# which Ray deletes with the job): set WORKDIR to a persistent or shared path, e.g. /mnt/shared/runs/NAME.
# Follow the logs with `ray job logs --follow JOB_ID`; stop it with `ray job stop JOB_ID`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $# -lt 2 ]]; then
  echo "usage: launch/submit.sh CONFIG NAME [extra metatrain train flags...]" >&2
  exit 2
fi
config=$1
name=$2
shift 2
address=${RAY_ADDRESS:-http://127.0.0.1:8265}
workdir=${WORKDIR:-runs/$name}
ray=${RAY:-ray}
if [[ -z ${RAY:-} && -x .venv/bin/ray ]]; then
  ray=.venv/bin/ray
fi

# `python -m metatrain.cli` (not the `metatrain` script) so that the driver imports the uploaded code,
# the same code the workers import, even where an older copy is pip-installed on the head.
exec "$ray" job submit \
  --address "$address" \
  --working-dir . \
  --submission-id "metatrain-$name-$(date +%Y%m%d-%H%M%S)" \
  --runtime-env-json '{"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}, "excludes": [".venv", ".git", "runs"]}' \
  -- python -m metatrain.cli train --config "$config" --workdir "$workdir" --address auto "$@"
