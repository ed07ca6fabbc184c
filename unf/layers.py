"""Flax nnx modules: thin wrappers over the functional core in :mod:`unf.linear`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from unf import linear
from unf.space import WeightSpace


class EquivariantLinear(nnx.Module):
  """The maximally expressive permutation-equivariant affine layer between weight spaces.

  Implements Zhou et al. 2024, "Universal Neural Functionals", Sec. 3: for
  every (output leaf, input leaf) pair, one weight per basis term (partition
  of their permutable axes into same-label blocks) per channel pair, and the
  full equivariant bias. It satisfies, for every group element ``sigma``
  (one permutation per label),

    ``EquivariantLinear(sigma . W) = sigma . EquivariantLinear(W)``.

  The parameter count depends only on the labels, the fixed-axis sizes and
  the feature counts, never on the label sizes: trained weights apply
  unchanged to a wider or narrower network of the same architecture.

  Fixed (None) axes are mixed like channels, which is exact but costs
  parameters quadratic in their number of coordinates: a Dense layer after a
  flatten has thousands. ``fixed_axes="auto"`` (the default) mixes at most
  :data:`unf.basis.AUTO_MIXED_COORDINATES` (10) fixed coordinates per leaf
  (3x3 kernel positions, a 10-class output) and gives the longer fixed axes
  labels of their own (:func:`unf.basis.label_fixed_axes`). The layer is then
  equivariant to a larger group, which contains the true one, so the identity
  above still holds. Along a labelled axis it applies one map shared by every
  position, plus terms that pool over the axis or broadcast along it (a Deep
  Sets layer on that axis), instead of a weight per pair of positions, so its
  size does not grow with the axis's length; it is maximally expressive for
  the larger group, and for the true one where nothing is labelled (``"mix"``,
  or short fixed axes only). :func:`unf.parameter_count` gives the size before
  building.

  Args:
    space_in: input weight space.
    space_out: output weight space (may differ from ``space_in``).
    in_features: trailing feature axis size of the input.
    out_features: trailing feature axis size of the output.
    rngs: flax random streams (``params`` is used).
    param_dtype: dtype of the weights.
    fixed_axes: ``"auto"`` (default), ``"mix"`` (mix every fixed axis like channels: maximally expressive for
      the true group, quadratic in the fixed coordinates), ``"label"`` (label every fixed axis, as the
      authors' code does) or an int ``n`` (mix at most ``n`` fixed coordinates per leaf).

  Example:
    >>> import jax, jax.numpy as jnp, unf
    >>> from flax import nnx
    >>> space = unf.WeightSpace({"w": ("in", "hidden"), "b": ("hidden",)})
    >>> layer = unf.EquivariantLinear(space, space, 1, 8, rngs=nnx.Rngs(0))
    >>> x = {"w": jnp.ones((5, 7, 1)), "b": jnp.ones((7, 1))}
    >>> layer(x)["w"].shape
    (5, 7, 8)
  """

  def __init__(
    self,
    space_in: WeightSpace,
    space_out: WeightSpace,
    in_features: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    param_dtype: Any = jnp.float32,
    fixed_axes: str | int = "auto",
  ):
    self.space_in = space_in
    self.space_out = space_out
    self.in_features = in_features
    self.out_features = out_features
    self.fixed_axes = fixed_axes
    params = linear.init(
      rngs.params(), space_in, space_out, in_features, out_features, dtype=param_dtype, fixed_axes=fixed_axes
    )
    self.weights = nnx.Dict({name: nnx.Param(value) for name, value in params.items()})

  def __call__(self, x: Any, *, out_sizes: Mapping[str, int] | None = None) -> dict:
    """Maps a pytree of ``space_in`` (trailing ``in_features`` axis) to one of ``space_out``."""
    params = {name: value[...] for name, value in self.weights.items()}
    return linear.apply(params, x, self.space_in, self.space_out, out_sizes=out_sizes, fixed_axes=self.fixed_axes)


class InvariantPool(nnx.Module):
  """The maximal invariant linear layer: every invariant functional of every leaf.

  ``InvariantPool(sigma . W) = InvariantPool(W)`` for every group element.
  Per leaf, every partition of its permutable axes into same-label blocks is
  read on the diagonal and mean-pooled (means keep outputs independent of the
  widths), for every feature and fixed coordinate; results are concatenated.
  It has no parameters; ``output_size(features)`` gives the vector length.

  Args:
    space: the weight space of its inputs (with fixed sizes).
    fixed_axes: as for :class:`EquivariantLinear`: fixed axes that it labels are averaged over, so that the
      output's length does not grow with theirs.
  """

  def __init__(self, space: WeightSpace, *, fixed_axes: str | int = "auto"):
    self.space = space
    self.fixed_axes = fixed_axes

  def output_size(self, features: int) -> int:
    """The length of the output vector for inputs with ``features`` features per weight."""
    return linear.invariant_pool_size(self.space, features, fixed_axes=self.fixed_axes)

  def __call__(self, x: Any) -> jax.Array:
    return linear.invariant_pool(x, self.space, fixed_axes=self.fixed_axes)


class UNF(nnx.Module):
  """A universal neural functional: equivariant layers with pointwise nonlinearities.

  Equivariant mode (``invariant=False``): ``space_in -> ... -> space_out``,
  satisfying ``UNF(sigma . W) = sigma . UNF(W)``; hidden layers live in
  ``space_in`` and the last layer maps to ``space_out`` (default
  ``space_in``).

  Invariant mode (``invariant=True``): the equivariant layers are followed
  by :class:`InvariantPool` and an MLP head, so ``UNF(sigma . W) = UNF(W)``
  and the output is a vector of ``out_features``.

  Args:
    space_in: weight space of the input.
    in_features: feature axis size of the input.
    out_features: feature axis size of the output (or vector size if invariant).
    hidden: feature sizes of the hidden equivariant layers.
    space_out: weight space of the output (equivariant mode).
    invariant: end with InvariantPool and an MLP head.
    head_hidden: hidden sizes of the invariant MLP head.
    activation: pointwise nonlinearity between layers.
    rngs: flax random streams.
    param_dtype: dtype of the weights.
    fixed_axes: how every layer treats fixed axes (:class:`EquivariantLinear`, :class:`InvariantPool`).

  Example:
    >>> import jax.numpy as jnp, unf
    >>> from flax import nnx
    >>> space = unf.WeightSpace({"w1": ("in", "h"), "w2": ("h", "out")})
    >>> net = unf.UNF(space, 1, 1, hidden=(16, 16), rngs=nnx.Rngs(0))
    >>> y = net({"w1": jnp.ones((4, 6, 1)), "w2": jnp.ones((6, 3, 1))})
    >>> y["w2"].shape
    (6, 3, 1)
  """

  def __init__(
    self,
    space_in: WeightSpace,
    in_features: int,
    out_features: int,
    *,
    hidden: Sequence[int] = (32, 32),
    space_out: WeightSpace | None = None,
    invariant: bool = False,
    head_hidden: Sequence[int] = (64,),
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
    rngs: nnx.Rngs,
    param_dtype: Any = jnp.float32,
    fixed_axes: str | int = "auto",
  ):
    if invariant and space_out is not None:
      raise ValueError("an invariant UNF outputs a vector: do not pass space_out with invariant=True.")
    self.activation = activation
    self.invariant = invariant
    space_out = space_in if space_out is None else space_out
    widths = [in_features, *hidden]
    if not invariant:
      widths.append(out_features)
    layers = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
      last = k == len(widths) - 2 and not invariant
      target = space_out if last else space_in
      layers.append(
        EquivariantLinear(space_in, target, a, b, rngs=rngs, param_dtype=param_dtype, fixed_axes=fixed_axes)
      )
    self.layers = nnx.List(layers)
    if invariant:
      self.pool = InvariantPool(space_in, fixed_axes=fixed_axes)
      sizes = [self.pool.output_size(widths[-1]), *head_hidden, out_features]
      self.head = nnx.List(
        [nnx.Linear(a, b, rngs=rngs, param_dtype=param_dtype) for a, b in zip(sizes[:-1], sizes[1:])]
      )

  def __call__(self, x: Any, *, out_sizes: Mapping[str, int] | None = None) -> Any:
    """Applies the network; ``out_sizes``: sizes of labels of ``space_out`` that ``space_in`` lacks."""
    if out_sizes is not None and self.invariant:
      raise ValueError("an invariant UNF outputs a vector: out_sizes is for space_out, which it does not have.")
    x = linear.apply_layers(
      [{name: value[...] for name, value in layer.weights.items()} for layer in self.layers],
      x,
      [self.layers[0].space_in, *(layer.space_out for layer in self.layers)],
      activation=self.activation,
      out_sizes=out_sizes,
      fixed_axes=self.layers[0].fixed_axes,
      pool=self.invariant,
    )
    if not self.invariant:
      return x
    h = x
    for k, dense in enumerate(self.head):
      h = dense(h)
      if k < len(self.head) - 1:
        h = self.activation(h)
    return h


def num_parameters(module: nnx.Module) -> int:
  """Number of scalar parameters of a flax nnx module.

  Args:
    module: any ``nnx.Module``; its ``nnx.Param`` variables are counted.

  Returns:
    The total number of scalars in them.
  """
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
