"""Small weight spaces of the four architectures, with label sizes, for layer tests."""

import unf

MLP = {
  "dense0": {"kernel": ("input", "hidden0"), "bias": ("hidden0",)},
  "dense1": {"kernel": ("hidden0", "hidden1"), "bias": ("hidden1",)},
  "dense2": {"kernel": ("hidden1", "output"), "bias": ("output",)},
}
CNN = {
  "conv0": {"kernel": (None, None, "input", "hidden0"), "bias": ("hidden0",)},
  "conv1": {"kernel": (None, None, "hidden0", "hidden1"), "bias": ("hidden1",)},
  "dense": {"kernel": ("hidden1", "output"), "bias": ("output",)},
}
RNN = {
  "embed": {"embedding": ("vocab_in", "embed")},
  "cell": {
    "dense_i": {"kernel": ("embed", "hidden"), "bias": ("hidden",)},
    "dense_h": {"kernel": ("hidden", "hidden")},
  },
  "head": {"kernel": ("hidden", "vocab_out"), "bias": ("vocab_out",)},
}
TRANSFORMER = {
  "embed": {"embedding": ("vocab_in", "residual")},
  "block0": {
    "norm": {"scale": ("residual",), "bias": ("residual",)},
    "query": {"kernel": ("residual", "heads", "qk")},
    "key": {"kernel": ("residual", "heads", "qk")},
    "value": {"kernel": ("residual", "heads", "v")},
    "out": {"kernel": ("heads", "v", "residual"), "bias": ("residual",)},
  },
  "head": {"kernel": ("residual", "vocab_out")},
}


def bound(spec, fixed=2):
  """The space with every fixed axis of size ``fixed``."""
  space = unf.WeightSpace(spec)
  sizes = {
    path: tuple(fixed if a is None else None for a in axes)
    for path, axes in zip(space.paths, space.axes)
    if None in axes
  }
  return unf.WeightSpace(spec, fixed_sizes=sizes)


SPACES = {"mlp": MLP, "cnn": CNN, "rnn": RNN, "transformer": TRANSFORMER}


def sizes_for(space, base=3):
  """Distinct sizes per label (so a mix-up of labels breaks shapes)."""
  return {label: base + i for i, label in enumerate(space.labels)}
