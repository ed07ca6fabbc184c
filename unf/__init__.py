"""Universal neural functionals: permutation-equivariant networks for any weight space.

Implements Zhou, Finn, Harrison (2024), "Universal Neural Functionals". Given a
network's :class:`WeightSpace`, :class:`EquivariantLinear` is the maximally
expressive permutation-equivariant affine layer on it, :class:`InvariantPool`
the maximal invariant linear layer, and :class:`UNF` stacks them. The builders
(:func:`mlp_space`, ...) read the space of common flax architectures from their
params, and :func:`check_symmetry` proves a space right on a real network.
:mod:`unf.testing` checks that a function of weights is equivariant or invariant.
:func:`parameter_count` gives a layer's size before it is built; the layers'
``fixed_axes`` option keeps it from growing with long fixed axes.
"""

from unf import basis, linear, testing
from unf.builders import cnn_space, merge_gates, mlp_space, rnn_space, split_gates, transformer_space
from unf.inference import explain_space, infer_space
from unf.layers import UNF, EquivariantLinear, InvariantPool, num_parameters
from unf.linear import parameter_count
from unf.permutation import inverse, permute, sample_permutation
from unf.space import WeightSpace
from unf.symmetry import SymmetryError, VacuousCheckError, check_symmetry

__all__ = [
  "UNF",
  "EquivariantLinear",
  "InvariantPool",
  "SymmetryError",
  "VacuousCheckError",
  "WeightSpace",
  "basis",
  "check_symmetry",
  "explain_space",
  "infer_space",
  "cnn_space",
  "inverse",
  "linear",
  "merge_gates",
  "mlp_space",
  "num_parameters",
  "parameter_count",
  "permute",
  "rnn_space",
  "sample_permutation",
  "split_gates",
  "testing",
  "transformer_space",
]
