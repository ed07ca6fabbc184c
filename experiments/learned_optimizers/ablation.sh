#!/usr/bin/env bash
# The learned-optimizer ablation (docs/api/guide/results.md): meta-train every row of configs/ablation/ (same task, budget
# and seed), then evaluate all rows on shared evaluation seeds against the tuned baselines.
# Resumable: a row whose run is complete starts nothing, an interrupted one resumes from its checkpoint.
#   experiments/learned_optimizers/ablation.sh [ROWS...]     (default: every row; RUNS=runs/ablation, JOBS=2)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/ablation}
JOBS=${JOBS:-2}
METATRAIN=${METATRAIN:-.venv/bin/metatrain}
if [ $# -eq 0 ]; then
  set -- $(ls configs/ablation/*.gin | xargs -n1 basename | sed 's/\.gin$//' | grep -v '^base$')
fi
mkdir -p "$RUNS"
printf '%s\n' "$@" | xargs -P "$JOBS" -I{} sh -c \
  "/usr/bin/time -f '{}: %e s' $METATRAIN train --config configs/ablation/{}.gin --workdir $RUNS/{} > $RUNS/{}.log 2>&1"
sources=$(printf "$RUNS/%s " "$@")
/usr/bin/time -f 'eval: %e s' $METATRAIN eval --checkpoint $sources --task mlp_fashion8 --steps 1000 --seeds 8 \
  --out "$RUNS/eval/mlp_fashion8"
