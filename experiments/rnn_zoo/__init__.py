"""The Tiny RNN Zoo experiment: predicting a trained network's test accuracy from its weights alone.

A small-scale version of Zhou, Finn, Harrison (2024), "Universal Neural
Functionals", Sec. 4.1. A zoo of tiny character-level IRNN language models is
trained on Shakespeare, each model with its own learning rate, initialization
scale, number of steps and label noise; three predictors, each invariant to
every relabelling of the weight space (``f(sigma . W) = f(W)``), learn to map
a model's weights to its test accuracy, and are scored by Kendall's tau
between their predictions and the true accuracies of held-out models.

Modules:

- :mod:`~experiments.rnn_zoo.zoo`: the zoo (config, IRNN model, vmapped training, storage,
  :func:`~experiments.rnn_zoo.zoo.generate`);
- :mod:`~experiments.rnn_zoo.predictors`: the invariant UNF, Deep Sets and StatNN predictors and their inputs;
- :mod:`~experiments.rnn_zoo.fit`: training a predictor, keeping the checkpoint with the best validation tau;
- :mod:`~experiments.rnn_zoo.stats`: Kendall's tau;
- :mod:`~experiments.rnn_zoo.main`: the experiment driver and the command line.

From the repository root::

  python -m experiments.rnn_zoo generate --out runs/zoo --models 300 --seed 0
  python -m experiments.rnn_zoo predict --zoo runs/zoo --seeds 3 --out runs/zoo/results
"""

# The modules are the public API (``from experiments.rnn_zoo import zoo, fit``): re-exporting their names here would
# shadow the module ``fit`` with its function ``fit.fit``, and keeps ``import experiments.rnn_zoo`` light.
__all__ = ["fit", "main", "predictors", "stats", "zoo"]
