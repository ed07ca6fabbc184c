"""Small weight spaces of the four architectures, with label sizes, and random spaces (hypothesis)."""

from hypothesis import strategies as st

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


# --- random spaces (hypothesis) -----------------------------------------------------

# Mixed str and int keys, "0" next to 0 included: paths must keep them apart.
KEYS = st.one_of(st.sampled_from(["kernel", "bias", "0", "layers"]), st.integers(0, 3))


@st.composite
def specs(draw, labels=("a", "b", "c"), *, keys=KEYS, depth=2, max_entries=3, max_rank=3):
  """A random nested spec: dicts of 1 to ``max_entries`` entries, leaves of labels and None axes.

  The default keys mix str and int in one dict, which ``WeightSpace`` takes but ``jax.jit`` cannot
  flatten (it sorts dict keys): pass str-only ``keys`` for pytrees that go through ``jit``.
  """
  entry = st.one_of(st.sampled_from(labels), st.none())
  leaf = st.lists(entry, max_size=max_rank).map(tuple)
  node = leaf
  for _ in range(depth - 1):
    node = st.one_of(leaf, st.dictionaries(keys, node, min_size=1, max_size=max_entries))
  return draw(st.dictionaries(keys, node, min_size=1, max_size=max_entries))


@st.composite
def fixed_sizes(draw, space, *, known=False):
  """Random sizes (1 to 3) of the fixed axes of ``space``, for every leaf if ``known``, else for some.

  A leaf without fixed axes may get sizes too (all None), as ``with_fixed_sizes`` gives it.
  """
  sizes = {}
  for path, axes in zip(space.paths, space.axes):
    if known or draw(st.booleans()):
      sizes[path] = tuple(draw(st.integers(1, 3)) if a is None else None for a in axes)
  return sizes
