"""Weight spaces: which axes of which tensors are permuted together.

A network's weight space is described by a nested dict that mirrors its params
pytree. Each leaf is a tuple with one entry per array axis: a string *label*
for an axis that is permuted when hidden neurons are reordered (axes with the
same label, in any leaves, are permuted by the same permutation), or ``None``
for a fixed axis (a convolution's spatial axes, input pixels, a vocabulary).

Example:
  >>> import unf
  >>> space = unf.WeightSpace({
  ...     "dense0": {"kernel": ("in", "hidden"), "bias": ("hidden",)},
  ...     "dense1": {"kernel": ("hidden", "out"), "bias": ("out",)},
  ... })
  >>> space.labels
  ('hidden', 'in', 'out')
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

Key = str | int
Path = tuple[Key, ...]
Axes = tuple[str | None, ...]


def path_str(path: Path) -> str:
  """Renders a leaf path as ``a/b/0/kernel``."""
  return "/".join(str(k) for k in path) if path else "<root>"


def _sort_key(key: Key) -> tuple[str, Any]:
  # Matches the order in which jax flattens dicts for uniform key types, and
  # stays total when int and str keys are mixed.
  return (type(key).__name__, key)


def _flatten_spec(spec: Any, prefix: Path = ()) -> list[tuple[Path, Axes]]:
  if isinstance(spec, tuple):
    for axis, entry in enumerate(spec):
      if entry is not None and not isinstance(entry, str):
        raise TypeError(
          f"WeightSpace leaf {path_str(prefix)!r} axis {axis}: entries must be "
          f"a string label or None (a fixed axis), got {entry!r}."
        )
    return [(prefix, spec)]
  if isinstance(spec, Mapping):
    if not spec and prefix:
      raise ValueError(f"WeightSpace node {path_str(prefix)!r} is an empty dict.")
    leaves = []
    for key in sorted(spec, key=_sort_key):
      if not isinstance(key, (str, int)):
        raise TypeError(f"WeightSpace keys must be str or int, got {key!r} at {path_str(prefix)!r}.")
      leaves.extend(_flatten_spec(spec[key], prefix + (key,)))
    return leaves
  if isinstance(spec, list):
    raise TypeError(
      f"WeightSpace leaf {path_str(prefix)!r} is a list {spec!r}: write each "
      "leaf as a tuple of labels, e.g. ('in', 'hidden')."
    )
  raise TypeError(
    f"WeightSpace leaf {path_str(prefix)!r}: expected a dict or a tuple of labels, got {type(spec).__name__} {spec!r}."
  )


def _leaves_with_paths(tree: Any, prefix: Path = ()) -> list[tuple[Path, Any]]:
  """Flattens nested mappings to (path, leaf); anything that is not a Mapping is a leaf."""
  if isinstance(tree, Mapping):
    out = []
    for key in sorted(tree, key=_sort_key):
      out.extend(_leaves_with_paths(tree[key], prefix + (key,)))
    return out
  return [(prefix, tree)]


_JSON_FORMAT = 1


def _excerpt(value: Any, limit: int = 60) -> str:
  text = repr(value)
  return f"{type(value).__name__} {text if len(text) <= limit else text[: limit - 3] + '...'}"


def _parse_json_leaf(index: int, leaf: Any) -> tuple[Path, Axes, tuple[int | None, ...] | None]:
  """Reads one entry of ``"leaves"``, naming its index on any error."""
  where = f"WeightSpace.from_json: leaf {index}"
  if not isinstance(leaf, dict):
    raise ValueError(f"{where} must be an object, got {_excerpt(leaf)}.")
  missing = [key for key in ("path", "axes", "fixed_sizes") if key not in leaf]
  if missing:
    raise ValueError(f"{where} lacks the keys {missing}.")
  unknown = sorted(set(leaf) - {"path", "axes", "fixed_sizes"})
  if unknown:
    raise ValueError(f"{where} has unknown keys {unknown}.")
  path, axes, fixed = leaf["path"], leaf["axes"], leaf["fixed_sizes"]
  # bool is an int in Python, but true/false are no params key.
  if not isinstance(path, list) or not path or any(isinstance(k, bool) or not isinstance(k, (str, int)) for k in path):
    raise ValueError(f'{where}: "path" must be a non-empty list of strings and ints, got {_excerpt(path)}.')
  if not isinstance(axes, list) or any(a is not None and not isinstance(a, str) for a in axes):
    raise ValueError(f'{where}: "axes" must be a list of labels (strings) and nulls, got {_excerpt(axes)}.')
  if fixed is not None:
    if not isinstance(fixed, list) or any(
      s is not None and (isinstance(s, bool) or not isinstance(s, int)) for s in fixed
    ):
      raise ValueError(f'{where}: "fixed_sizes" must be null or a list of ints and nulls, got {_excerpt(fixed)}.')
    fixed = tuple(fixed)
  return tuple(path), tuple(axes), fixed


def _fixed_only(sizes: tuple[int | None, ...]) -> tuple[int, ...]:
  return tuple(s for s in sizes if s is not None)


class WeightSpace:
  """A frozen, hashable description of a network's weight space.

  Args:
    spec: nested dict mirroring a params pytree; each leaf a tuple with, per
      array axis, a string label (permutable) or None (fixed).
    fixed_sizes: optional sizes of the fixed axes, as a mapping from leaf path
      (a tuple of keys) to a tuple with an int for every fixed axis and None
      for permutable ones. Usually set by :meth:`with_fixed_sizes`.

  The space is static data: pass it to ``jax.jit`` as a static argument or
  close over it. It is also registered as a pytree with no leaves.
  """

  __slots__ = ("_leaves", "_fixed", "_hash")

  def __init__(self, spec: Mapping, *, fixed_sizes: Mapping[Path, Sequence[int | None]] | None = None):
    if not isinstance(spec, Mapping):
      raise TypeError(f"WeightSpace spec must be a dict mirroring the params pytree, got {type(spec).__name__}.")
    leaves = tuple(_flatten_spec(spec))
    if not leaves:
      raise ValueError("WeightSpace spec has no leaves.")
    fixed: list[tuple[int | None, ...] | None] = []
    fixed_sizes = dict(fixed_sizes or {})
    for path, axes in leaves:
      sizes = fixed_sizes.pop(path, None)
      if sizes is not None:
        sizes = tuple(None if s is None else int(s) for s in sizes)
        if len(sizes) != len(axes) or any((a is None) != (s is not None) for a, s in zip(axes, sizes)):
          raise ValueError(
            f"fixed_sizes for leaf {path_str(path)!r} is {sizes}; it must have one entry per "
            f"axis of {axes}, an int exactly where the axis is fixed (None)."
          )
      fixed.append(sizes)
    if fixed_sizes:
      raise ValueError(f"fixed_sizes names leaves that are not in the spec: {[path_str(p) for p in fixed_sizes]}.")
    self._leaves = leaves
    self._fixed = tuple(fixed)
    self._hash = hash((self._leaves, self._fixed))

  # --- structure ---------------------------------------------------------

  @property
  def paths(self) -> tuple[Path, ...]:
    """Leaf paths in pytree (sorted-key) order."""
    return tuple(path for path, _ in self._leaves)

  @property
  def axes(self) -> tuple[Axes, ...]:
    """Per leaf, its tuple of labels / None, in the order of :attr:`paths`."""
    return tuple(axes for _, axes in self._leaves)

  @property
  def fixed_sizes(self) -> tuple[tuple[int | None, ...] | None, ...]:
    """Per leaf, the sizes of its fixed axes (None where unknown)."""
    return self._fixed

  @property
  def labels(self) -> tuple[str, ...]:
    """All permutation labels, sorted."""
    return tuple(sorted({a for axes in self.axes for a in axes if a is not None}))

  def __len__(self) -> int:
    return len(self._leaves)

  def spec(self) -> dict:
    """The nested-dict spec this space was built from."""
    return self.unflatten(self.axes)

  def fixed_shape(self, index: int) -> tuple[int, ...]:
    """Sizes of leaf ``index``'s fixed axes, in axis order; raises if unknown."""
    axes, sizes = self._leaves[index][1], self._fixed[index]
    n_fixed = sum(a is None for a in axes)
    if n_fixed == 0:
      return ()
    if sizes is None:
      raise ValueError(
        f"leaf {path_str(self.paths[index])!r} has fixed (None) axes whose sizes are unknown; "
        "layers mix fixed axes like channels and need their sizes: build the space with "
        "space.with_fixed_sizes(params) (the unf builders do this for you)."
      )
    return tuple(s for s in sizes if s is not None)

  def with_fixed_sizes(self, params: Any) -> WeightSpace:
    """Returns this space with its fixed-axis sizes read from ``params`` (validated)."""
    self.validate(params)
    shapes = [np.shape(leaf) for leaf in self.flatten(params)]
    fixed = {
      path: tuple(None if a is not None else s for a, s in zip(axes, shape))
      for (path, axes), shape in zip(self._leaves, shapes)
    }
    return WeightSpace(self.spec(), fixed_sizes=fixed)

  def subspace(self, *path: Key) -> WeightSpace:
    """The space of the sub-tree at ``path``: its leaves, with their labels and fixed sizes, paths shortened.

    For a space read from more than the trainable params, e.g. ``infer_space`` on linen's
    ``{"params": ..., "batch_stats": ...}``, ``space.subspace("params")`` is the space of the params alone, the
    one an optimizer over them needs. Labels keep their names, also those the sub-tree shares with leaves
    outside it: a group element acts on the sub-tree as it acts there in the whole space (permuting the
    sub-tree alone is a symmetry of the network only with the rest permuted alike, BatchNorm statistics
    included).

    Args:
      *path: the keys (str or int) from the root to a dict of the spec; none gives this space.

    Returns:
      A :class:`WeightSpace` equal to ``WeightSpace(spec[path...]).with_fixed_sizes(params[path...])``.

    Raises:
      TypeError: a key that is not a str or int (a tuple, say: pass the keys as separate arguments).
      ValueError: naming the first key that is not there and the keys there are, or a path that ends at a leaf.

    Example:
      >>> import unf
      >>> space = unf.WeightSpace({
      ...     "params": {"dense": {"kernel": (None, "h"), "bias": ("h",)}},
      ...     "batch_stats": {"norm": {"mean": ("h",)}},
      ... }, fixed_sizes={("params", "dense", "kernel"): (3, None)})
      >>> space.subspace("params")
      WeightSpace(
        dense/bias: (h,)
        dense/kernel: (None[3], h)
      )
      >>> space.subspace("parms")
      Traceback (most recent call last):
      ValueError: WeightSpace.subspace: no key 'parms' at '<root>'; the keys there are ['batch_stats', 'params'].
    """
    bad = [key for key in path if isinstance(key, bool) or not isinstance(key, (str, int))]
    if bad:
      raise TypeError(
        f"WeightSpace.subspace takes the keys as separate str or int arguments, e.g. subspace('params', 'dense'); "
        f"got {bad[0]!r}."
      )
    if not path:
      return self
    depth = len(path)
    leaves = [(p[depth:], axes, fixed) for (p, axes), fixed in zip(self._leaves, self._fixed) if p[:depth] == path]
    if leaves and leaves[0][0] == ():
      raise ValueError(
        f"WeightSpace.subspace: {path_str(path)!r} is a leaf with axes {leaves[0][1]}, not a sub-tree; pass the "
        f"path of the dict above it ({path_str(path[:-1])!r})."
      )
    if not leaves:
      # The first key of path that is missing: the keys before it lead to a dict (or a leaf) of the spec.
      at = next(at for at in range(depth) if path[: at + 1] not in {p[: at + 1] for p in self.paths})
      keys = sorted({p[at] for p in self.paths if p[:at] == path[:at] and len(p) > at}, key=_sort_key)
      if not keys:
        raise ValueError(f"WeightSpace.subspace: {path_str(path[:at])!r} is a leaf, so it has no key {path[at]!r}.")
      raise ValueError(
        f"WeightSpace.subspace: no key {path[at]!r} at {path_str(path[:at])!r}; the keys there are {keys}."
      )
    spec: dict = {}
    for sub, axes, _ in leaves:
      node = spec
      for key in sub[:-1]:
        node = node.setdefault(key, {})
      node[sub[-1]] = axes
    return WeightSpace(spec, fixed_sizes={sub: fixed for sub, _, fixed in leaves if fixed is not None})

  # --- pytrees -----------------------------------------------------------

  def flatten(self, tree: Any) -> list[Any]:
    """Leaves of ``tree`` (a nested dict shaped like the spec) in :attr:`paths` order."""
    found = dict(_leaves_with_paths(tree))
    missing = [path_str(p) for p in self.paths if p not in found]
    if missing:
      raise ValueError(f"pytree is missing leaves of the weight space: {missing}.")
    return [found[p] for p in self.paths]

  def unflatten(self, leaves: Sequence[Any]) -> dict:
    """Builds a nested dict shaped like the spec from leaves in :attr:`paths` order."""
    if len(leaves) != len(self._leaves):
      raise ValueError(f"expected {len(self._leaves)} leaves, got {len(leaves)}.")
    root: dict = {}
    for path, leaf in zip(self.paths, leaves):
      node = root
      for key in path[:-1]:
        node = node.setdefault(key, {})
      if path:
        node[path[-1]] = leaf
      else:
        raise ValueError("a WeightSpace leaf at the root is not supported: use a dict.")
    return root

  def validate(self, params: Any, *, trailing: int = 0) -> dict[str, int]:
    """Checks that ``params`` lies in this space and returns the size of every label.

    Args:
      params: nested dict of arrays (or anything with ``.shape``).
      trailing: number of extra trailing axes per leaf (e.g. 1 for features).

    Returns:
      A dict from label to its size.

    Raises:
      ValueError: naming the leaf path and axis on a missing or extra leaf, a
        rank mismatch, a fixed-size mismatch, or two axes with one label that
        disagree in size.
    """
    found = _leaves_with_paths(params)
    found_paths = {p for p, _ in found}
    expected = set(self.paths)
    missing = sorted(path_str(p) for p in expected - found_paths)
    extra = sorted(path_str(p) for p in found_paths - expected)
    if missing or extra:
      raise ValueError(
        "params do not match the weight space: "
        + (f"missing leaves {missing}" if missing else "")
        + ("; " if missing and extra else "")
        + (f"extra leaves {extra}" if extra else "")
        + "."
      )
    sizes: dict[str, int] = {}
    first_seen: dict[str, str] = {}
    leaves = dict(found)
    for (path, axes), fixed in zip(self._leaves, self._fixed):
      leaf = leaves[path]
      shape = getattr(leaf, "shape", None)
      if shape is None:
        raise ValueError(f"leaf {path_str(path)!r} is a {type(leaf).__name__}, not an array.")
      if len(shape) != len(axes) + trailing:
        raise ValueError(
          f"leaf {path_str(path)!r} has rank {len(shape)} (shape {tuple(shape)}), but the weight "
          f"space gives it {len(axes)} axes {axes}" + (f" plus {trailing} trailing" if trailing else "") + "."
        )
      for axis, (label, size) in enumerate(zip(axes, shape)):
        if label is None:
          if fixed is not None and fixed[axis] != size:
            raise ValueError(
              f"leaf {path_str(path)!r} axis {axis} is fixed with size {fixed[axis]} in the weight "
              f"space, but has size {size}."
            )
          continue
        where = f"{path_str(path)!r} axis {axis}"
        if label in sizes and sizes[label] != size:
          raise ValueError(
            f"label {label!r} has size {sizes[label]} at {first_seen[label]} but size {size} at "
            f"{where}: axes that share a label must have equal sizes."
          )
        sizes.setdefault(label, int(size))
        first_seen.setdefault(label, where)
    return sizes

  # --- text and renaming -------------------------------------------------

  def to_json(self) -> dict[str, Any]:
    """This space as JSON-ready values, lossless: :meth:`from_json` gives back an equal space.

    As every ``to_json`` of the project (learned optimizers, estimators), it
    returns values for ``json.dumps``, not text. Per leaf, in :attr:`paths`
    order: its path (str and int keys stay apart, since JSON keeps strings and
    numbers apart), its axes (a label or null) and its fixed sizes (null if
    unknown, else an int per fixed axis and null per permutable one).

    Returns:
      ``{"format": 1, "leaves": [{"path": ..., "axes": ..., "fixed_sizes": ...}, ...]}``.

    Example:
      >>> import json, unf
      >>> space = unf.WeightSpace({"layers": {0: {"kernel": ("in", "hidden")}}})
      >>> json.dumps(space.to_json())
      '{"format": 1, "leaves": [{"path": ["layers", 0, "kernel"], "axes": ["in", "hidden"], "fixed_sizes": null}]}'
      >>> unf.WeightSpace.from_json(space.to_json()) == space
      True
    """
    leaves = [
      {"path": list(path), "axes": list(axes), "fixed_sizes": None if fixed is None else list(fixed)}
      for (path, axes), fixed in zip(self._leaves, self._fixed)
    ]
    return {"format": _JSON_FORMAT, "leaves": leaves}

  @classmethod
  def from_json(cls, values: dict[str, Any] | str) -> WeightSpace:
    """Reads what :meth:`to_json` gave (with or without its ``"format"`` key), as values or as JSON text.

    Args:
      values: ``{"leaves": [{"path": [...], "axes": [...], "fixed_sizes": null | [...]}, ...]}``, or its JSON
        text (as files written before ``to_json`` returned values hold it).

    Returns:
      The weight space it describes.

    Raises:
      ValueError: naming what is wrong if the text is not JSON, lacks a key,
        holds a value of the wrong type, repeats a path or is not a valid space.
    """
    data: Any = values
    if isinstance(values, str):
      try:
        data = json.loads(values)
      except json.JSONDecodeError as error:
        raise ValueError(f"WeightSpace.from_json: the text is not JSON: {error}.") from None
    if not isinstance(data, dict) or "leaves" not in data:
      raise ValueError(f'WeightSpace.from_json: expected an object with a "leaves" list, got {_excerpt(data)}.')
    if data.get("format", _JSON_FORMAT) != _JSON_FORMAT:
      raise ValueError(f"WeightSpace.from_json: unknown format {data['format']!r}; this version reads {_JSON_FORMAT}.")
    unknown = sorted(set(data) - {"format", "leaves"})
    if unknown:
      raise ValueError(f"WeightSpace.from_json: unknown top-level keys {unknown}.")
    if not isinstance(data["leaves"], list):
      raise ValueError(f'WeightSpace.from_json: "leaves" must be a list, got {_excerpt(data["leaves"])}.')
    spec: dict = {}
    fixed_sizes: dict[Path, tuple[int | None, ...]] = {}
    for index, leaf in enumerate(data["leaves"]):
      path, axes, fixed = _parse_json_leaf(index, leaf)
      node = spec
      for depth, key in enumerate(path):
        last = depth == len(path) - 1
        if (last and key in node) or (not last and not isinstance(node.setdefault(key, {}), dict)):
          raise ValueError(
            f"WeightSpace.from_json: leaf {index} path {path_str(path)!r} clashes with an earlier leaf at "
            f"{path_str(path[: depth + 1])!r}."
          )
        if last:
          node[key] = axes
        else:
          node = node[key]
      if fixed is not None:
        fixed_sizes[path] = fixed
    try:
      return cls(spec, fixed_sizes=fixed_sizes)
    except (TypeError, ValueError) as error:
      raise ValueError(f"WeightSpace.from_json: not a valid weight space: {error}") from None

  def match(self, other: WeightSpace) -> dict[str, str]:
    """The renaming of labels under which ``other`` is this space, up to leaf paths.

    Leaf ``i`` of this space (in :attr:`paths` order) corresponds to leaf ``i``
    of ``other``, whatever their paths: they must have the same rank, fixed
    (None) axes at the same positions and equal fixed sizes (a size that one
    side does not know matches any size), and one bijection of labels must
    carry every leaf's labels onto the other's, axis by axis. Two spaces that
    match describe the same symmetry of weights laid out in the same order, so
    an equivariant layer for one is a layer for the other
    (:func:`unf.linear.transfer`).

    Args:
      other: the space to match against.

    Returns:
      The bijection ``{label of self: label of other}``, over all labels.

    Raises:
      ValueError: naming the first difference: the leaf counts, a leaf whose
        axes or fixed sizes differ, or a label that would map two ways.

    Example:
      >>> import unf
      >>> a = unf.WeightSpace({"layers": {0: {"kernel": ("in", "h0")}, 1: {"kernel": ("h0", "out")}}})
      >>> b = unf.WeightSpace({"fc1": {"kernel": ("x", "hidden")}, "fc2": {"kernel": ("hidden", "y")}})
      >>> a.match(b)
      {'in': 'x', 'h0': 'hidden', 'out': 'y'}
    """
    if not isinstance(other, WeightSpace):
      raise TypeError(f"WeightSpace.match expects a WeightSpace, got {type(other).__name__}.")
    if len(self) != len(other):
      raise ValueError(f"the spaces do not match: {len(self)} leaves against {len(other)}.")
    forward: dict[str, str] = {}
    backward: dict[str, str] = {}
    for index, ((path, axes), (other_path, other_axes)) in enumerate(zip(self._leaves, other._leaves)):
      where = f"leaf {index}: {path_str(path)!r}"
      if len(axes) != len(other_axes) or any((a is None) != (b is None) for a, b in zip(axes, other_axes)):
        raise ValueError(
          f"the spaces do not match: {where} has axes {axes} but {path_str(other_path)!r} has axes {other_axes}."
        )
      fixed, other_fixed = self._fixed[index], other._fixed[index]
      if fixed is not None and other_fixed is not None and fixed != other_fixed:
        raise ValueError(
          f"the spaces do not match: {where} has fixed sizes {_fixed_only(fixed)} but "
          f"{path_str(other_path)!r} has {_fixed_only(other_fixed)}."
        )
      for axis, (a, b) in enumerate(zip(axes, other_axes)):
        if a is None or b is None:  # both or neither: checked above
          continue
        at = f"({where} axis {axis} against {path_str(other_path)!r})"
        if forward.setdefault(a, b) != b:
          raise ValueError(f"the spaces do not match: label {a!r} would be both {forward[a]!r} and {b!r} {at}.")
        if backward.setdefault(b, a) != a:
          raise ValueError(f"the spaces do not match: labels {backward[b]!r} and {a!r} would both be {b!r} {at}.")
    return forward

  def relaxed_to(self, reference: WeightSpace) -> WeightSpace:
    """This space with its fixed axes read as permutable wherever ``reference`` permutes the same axis.

    A fixed axis can always be read as a permutable one: a layer equivariant to the larger group is
    equivariant to this space's. Where ``reference`` has label ``L`` on an axis this space fixes, the axis gets
    the label ``L`` (primed while this space already uses that name), the same for every axis ``L`` is on; the
    other axes are unchanged. So a space inferred with ``io="fixed"`` (``unf.infer_space``'s default) reads as
    one built with ``io="permutable"``, the paper's choice for input and output axes, when ``reference`` is.

    Args:
      reference: a space with the same leaves in the same order (any paths and label names).

    Returns:
      The relaxed space (fixed sizes kept for the axes still fixed); this space when there is nothing to relax.

    Raises:
      ValueError: a different number of leaves, or of axes on a leaf.
    """
    if len(self) != len(reference) or any(len(a) != len(b) for a, b in zip(self.axes, reference.axes)):
      raise ValueError("relaxed_to: the spaces must have the same leaves with the same number of axes each.")
    names: dict[str, str] = {}
    taken = set(self.labels)
    for axes, other in zip(self.axes, reference.axes):
      for a, b in zip(axes, other):
        if a is None and b is not None and b not in names:
          name = b
          while name in taken:
            name += "'"
          names[b] = name
          taken.add(name)
    if not names:
      return self
    leaves, fixed = {}, {}
    for (path, axes), sizes, other in zip(self._leaves, self._fixed, reference.axes):
      relaxed = tuple(names[b] if a is None and b is not None else a for a, b in zip(axes, other))
      leaves[path] = relaxed
      if sizes is not None and any(a is None for a in relaxed):
        fixed[path] = tuple(s if a is None else None for a, s in zip(relaxed, sizes))
    return WeightSpace(self.unflatten([leaves[path] for path in self.paths]), fixed_sizes=fixed)

  # --- value semantics ---------------------------------------------------

  def __eq__(self, other: object) -> bool:
    return isinstance(other, WeightSpace) and (self._leaves, self._fixed) == (other._leaves, other._fixed)

  def __hash__(self) -> int:
    return self._hash

  def __setattr__(self, name, value):
    if hasattr(self, "_hash"):
      raise AttributeError("WeightSpace is immutable.")
    object.__setattr__(self, name, value)

  def __repr__(self) -> str:
    lines = []
    for (path, axes), fixed in zip(self._leaves, self._fixed):
      entries = []
      for axis, label in enumerate(axes):
        if label is not None:
          entries.append(label)
        else:
          entries.append("None" if fixed is None else f"None[{fixed[axis]}]")
      lines.append(f"  {path_str(path)}: ({', '.join(entries)}{',' if len(entries) == 1 else ''})")
    return "WeightSpace(\n" + "\n".join(lines) + "\n)"

  def num_parameters(self, sizes: Mapping[str, int]) -> int:
    """Number of scalars in a params pytree of this space with the given label sizes."""
    total = 0
    for index, axes in enumerate(self.axes):
      fixed = iter(self.fixed_shape(index))
      total += math.prod(sizes[a] if a is not None else next(fixed) for a in axes)
    return total


jax.tree_util.register_pytree_node(
  WeightSpace,
  lambda space: ((), space),
  lambda space, _: space,
)
