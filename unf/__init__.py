"""Universal neural functionals: permutation-equivariant networks for any weight space."""

from unf.permutation import inverse, permute, sample_permutation
from unf.space import WeightSpace

__all__ = [
  "WeightSpace",
  "inverse",
  "permute",
  "sample_permutation",
]
