#!/usr/bin/env bash
# Meta-trains on this machine: `metatrain train` with a local Ray (one worker per CPU unless the config says).
#
# Usage: launch/local.sh [NAME] [extra `metatrain train` flags...]
#   launch/local.sh                                    # configs/mlp_unf.gin into runs/mlp_unf
#   CONFIG=configs/smoke.gin launch/local.sh smoke --gin_bindings TrainConfig.outer_steps=10
# Run it again with the same NAME to resume from runs/NAME's latest checkpoint.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

name=mlp_unf
if [[ $# -gt 0 && $1 != -* ]]; then
  name=$1
  shift
fi
config=${CONFIG:-configs/mlp_unf.gin}
metatrain=${METATRAIN:-.venv/bin/metatrain}
if [[ ! -x $metatrain ]]; then
  echo "launch/local.sh: $metatrain not found: run 'make test' (or 'make run') once to create .venv." >&2
  exit 1
fi

export RAY_USAGE_STATS_ENABLED=0
exec "$metatrain" train --config "$config" --workdir "runs/$name" "$@"
