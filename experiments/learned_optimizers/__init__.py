"""Experiment 1, the learned optimizers against tuned baselines (docs/api/guide/results.md): drivers, pooling.

``ablation.sh`` and ``exp1.sh`` run ``metatrain train`` and ``metatrain eval``; ``python -m
experiments.learned_optimizers.pooled EVAL_FOLDER`` pools the meta-training seeds of each learned optimizer.
"""
