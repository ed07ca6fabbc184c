"""Universal neural functionals: permutation-equivariant networks for any weight space.

Implements Zhou, Finn, Harrison (2024), "Universal Neural Functionals". Given a
network's :class:`WeightSpace`, :class:`EquivariantLinear` is the maximally
expressive permutation-equivariant affine layer on it, :class:`InvariantPool`
the maximal invariant linear layer, and :class:`UNF` stacks them.
"""

from unf import basis, linear
from unf.layers import UNF, EquivariantLinear, InvariantPool, num_parameters
from unf.permutation import inverse, permute, sample_permutation
from unf.space import WeightSpace

__all__ = [
  "UNF",
  "EquivariantLinear",
  "InvariantPool",
  "WeightSpace",
  "basis",
  "inverse",
  "linear",
  "num_parameters",
  "permute",
  "sample_permutation",
]
