#!/usr/bin/env bash
# Experiment 2 (docs/api/guide/results.md): both zoos, every predictor at the paper's sizes (the UNF on the
# authors' space: one shared label for the character axes), three seeds, under two budgets: the paper's (BCE on
# the accuracy, Adam 1e-3, batch 10, 10 epochs, a checkpoint per epoch) and ours (MSE on the standardized
# accuracy, 1,500 steps of 32 models, a checkpoint every 100). On the arithmetic zoo at the paper's budget also
# the UNF's two variants: the paper's three equivariant layers (unf@paper3) and the fixed axes left to the UNF's
# default fixed_axes="auto" (unf@bounded). Checkpoints are always selected by validation tau; the test split is read
# once per seed.
# Resumable: the arithmetic zoo resumes from its shards; a finished predict is run again (a few minutes).
#   experiments/rnn_zoo/exp2.sh   (RUNS=runs, MODELS=3000)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs}
MODELS=${MODELS:-3000}
PY=${PY:-.venv/bin/python}
mkdir -p "$RUNS"
/usr/bin/time -f "arithmetic zoo: %e s" $PY -m experiments.rnn_zoo arithmetic --out "$RUNS/arith$MODELS" \
  --models "$MODELS" --no_progress
[ -f "$RUNS/zoo/test.npz" ] || /usr/bin/time -f "irnn zoo: %e s" $PY -m experiments.rnn_zoo generate \
  --out "$RUNS/zoo" --models 300 --seed 0 --no_progress
for zoo in "arith$MODELS" zoo; do
  for budget in paper flags; do
    predictors=(unf deep_sets statnn)
    # the paper's zoo at the paper's budget: the UNF's two variants too, paired with the others
    [ "$zoo:$budget" = "arith$MODELS:paper" ] && predictors=(unf unf@paper3 unf@bounded deep_sets statnn)
    /usr/bin/time -f "predict $zoo $budget: %e s" $PY -m experiments.rnn_zoo predict --zoo "$RUNS/$zoo" --seeds 3 \
      --sizes paper --budget "$budget" --predictors "${predictors[@]}" --out "$RUNS/$zoo/results_paper_$budget" \
      --no_progress
  done
done
