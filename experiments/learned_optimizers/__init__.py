"""Experiment 1 of the README, the learned optimizers against tuned baselines: drivers and the pooled comparison.

``ablation.sh`` and ``exp1.sh`` run ``metatrain train`` and ``metatrain eval``; ``python -m
experiments.learned_optimizers.pooled EVAL_FOLDER`` pools the meta-training seeds of each learned optimizer.
"""
