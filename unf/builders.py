"""Weight spaces of common flax nnx architectures, read from their params.

Each builder takes a params pytree as a pure nested dict (for a module ``model``:
``nnx.to_pure_dict(nnx.state(model, nnx.Param))``; keys may be str or int) and
returns the :class:`~unf.WeightSpace` of its permutation symmetries, already
bound to the params' fixed sizes (:meth:`~unf.WeightSpace.with_fixed_sizes`).

The network's input and output axes (input features or channels, output
classes, vocabulary, sequence positions) are not exact symmetries: with
``io="permutable"`` (the default, as in Zhou, Finn, Harrison 2024, "Universal
Neural Functionals") each gets a label of its own, an inductive bias for the
neural functional; with ``io="fixed"`` they are fixed (None) and every label is
an exact symmetry, which :func:`unf.symmetry.check_symmetry` can confirm.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from unf.space import Axes, Path, WeightSpace, path_str

_IO_CHOICES = ("permutable", "fixed")
# Which state an nnx cell's Linear reads: the input (embedding) or the hidden
# state. SimpleCell and the split GRU / OptimizedLSTM use dense_i / dense_h,
# LSTMCell one Linear per gate and source.
_CELL_INPUT = frozenset({"dense_i", "ii", "if_", "ig", "io"})
_CELL_HIDDEN = frozenset({"dense_h", "hi", "hf", "hg", "ho"})
_ATTENTION = frozenset({"query", "key", "value", "out"})


# --- helpers -----------------------------------------------------------------


def _io_label(io: str, name: str) -> str | None:
  if io not in _IO_CHOICES:
    raise ValueError(f"io must be one of {_IO_CHOICES}, got {io!r}.")
  return name if io == "permutable" else None


def _natural_key(path: Path) -> tuple:
  # Dense_2 before Dense_10, and 2 before 10 for nnx.List's int keys.
  parts: list[tuple[tuple[int, int | str], ...]] = []
  for key in path:
    if isinstance(key, int):
      parts.append(((0, key),))
    else:
      parts.append(tuple((0, int(c)) if c.isdigit() else (1, c) for c in re.split(r"(\d+)", key) if c))
  return tuple(parts)


def _children(node: Mapping, prefix: Path) -> list[tuple[Path, Any]]:
  return sorted(((prefix + (k,), v) for k, v in node.items()), key=lambda item: _natural_key(item[0]))


def _entries(node: Any, where: Path, required: tuple[str, ...] = (), **axes: Axes) -> dict:
  """The spec of a module's params dict, given the axes of each allowed entry."""
  if not isinstance(node, Mapping):
    raise ValueError(f"{path_str(where)!r}: expected a dict with entries {sorted(axes)}, got {type(node).__name__}.")
  unknown = sorted(map(str, set(node) - set(axes)))
  missing = sorted(set(required) - set(node))
  if unknown or missing:
    raise ValueError(
      f"{path_str(where)!r} has entries {sorted(map(str, node))}; expected {sorted(axes)}"
      + (f" with {list(required)} required" if required else "")
      + "."
    )
  return {k: axes[k] for k in node}


def _set(spec: dict, path: Path, value: Any) -> None:
  for key in path[:-1]:
    spec = spec.setdefault(key, {})
  spec[path[-1]] = value


def _get(params: Any, key: str, builder: str) -> Any:
  """``params[key]``; a key with slashes (``"rnn/cell"``) is a path into nested dicts."""
  node = params
  for part in key.split("/"):
    if not isinstance(node, Mapping) or part not in node:
      found = sorted(map(str, node)) if isinstance(node, Mapping) else type(node).__name__
      nested = [
        f"{name}/{part}"
        for name, child in (node.items() if isinstance(node, Mapping) else ())
        if isinstance(child, Mapping) and part in child
      ]
      hint = f" It is nested under {nested[0]!r} (as nnx.RNN nests its cell): pass that path." if nested else ""
      raise ValueError(f"{builder}: expected params[{key!r}], found {found}.{hint}")
    node = node[part]
  return node


def _bind(spec: dict, params: Any, builder: str, hint: str = "") -> WeightSpace:
  try:
    return WeightSpace(spec).with_fixed_sizes(params)
  except ValueError as error:
    raise ValueError(f"{builder}: {error}{hint}") from error


def _layers(params: Any, builder: str) -> list[tuple[Path, Mapping]]:
  """Every dict holding a 'kernel' (a Linear or Conv), in natural path order."""
  if not isinstance(params, Mapping):
    raise ValueError(f"{builder}: expected a nested dict of params, got {type(params).__name__}.")
  layers = []

  def walk(node: Mapping, prefix: Path) -> None:
    for path, child in _children(node, prefix):
      if isinstance(child, Mapping) and "kernel" in child:
        layers.append((path, child))
      elif isinstance(child, Mapping):
        walk(child, path)
      else:
        raise ValueError(
          f"{builder}: leaf {path_str(path)!r} is not in a Linear or Conv (a dict with 'kernel' and 'bias'); "
          f"{builder} reads a plain chain of them. For a norm, a skip or any other structure, read the space "
          "from the computation: unf.infer_space(apply_fn, params, x)."
        )

  walk(params, ())
  if not layers:
    raise ValueError(f"{builder}: found no layers (dicts with a 'kernel') in the params.")
  return layers


def _numbered(path: Path) -> bool:
  return any(isinstance(key, int) or any(c.isdigit() for c in key) for key in path)


def _check_order(layers: list[tuple[Path, Any]], builder: str, what: str = "layers") -> None:
  """Layers are chained in the natural order of their paths: that order must come from numbers in them."""
  unnumbered = [path_str(path) for path, _ in layers if not _numbered(path)]
  if len(layers) > 1 and unnumbered:
    raise ValueError(
      f"{builder}: the {what} {[path_str(path) for path, _ in layers]} are chained in the order of the numbers "
      f"in their paths (layers/0, Dense_1, ...), but {unnumbered} carry none, so the order they are called in "
      "is unknown (and with square layers a wrong order gives a wrong space without an error). Name them with "
      "their position, or read the space from the computation: unf.infer_space(apply_fn, params, x)."
    )


def _chain(layers: list[tuple[Path, Mapping]], labels: list[str | None]) -> dict:
  """Layer k maps labels[k] to labels[k + 1]; leading kernel axes (spatial) are fixed."""
  spec: dict = {}
  for k, (path, layer) in enumerate(layers):
    lead = (None,) * (np.ndim(layer["kernel"]) - 2)
    _set(spec, path, _entries(layer, path, kernel=lead + (labels[k], labels[k + 1]), bias=(labels[k + 1],)))
  return spec


def _hidden_chain(layers: list, io: str) -> list[str | None]:
  hidden = [f"hidden{k}" for k in range(len(layers) - 1)]
  return [_io_label(io, "input"), *hidden, _io_label(io, "output")]


# --- MLPs and CNNs -------------------------------------------------------------


def mlp_space(params: Any, *, io: str = "permutable") -> WeightSpace:
  """The weight space of a multilayer perceptron: a sequence of dense layers.

  Every dict with a ``'kernel'`` (in, out) and optional ``'bias'`` (out,) is a
  layer, taken in the natural order of their paths (``Dense_2`` before
  ``Dense_10``, int key 2 before 10), as ``nnx.Sequential`` or attributes name
  them. Layer k's output axis and layer k+1's input axis share ``hidden{k}``.

  Args:
    params: the MLP's params as a nested dict.
    io: ``"permutable"`` labels the first kernel's input axis ``"input"`` and
      the last layer's output axes ``"output"``; ``"fixed"`` makes them None.

  Returns:
    The weight space, bound to the params' sizes.

  Raises:
    ValueError: on a bad ``io``, a leaf outside a layer, a kernel that is not
      2-D, or consecutive layers whose sizes disagree.

  Example:
    >>> import numpy as np
    >>> from unf.builders import mlp_space
    >>> params = {"layers": {0: {"kernel": np.zeros((6, 5)), "bias": np.zeros(5)}, 2: {"kernel": np.zeros((5, 3))}}}
    >>> mlp_space(params).spec()["layers"][0]
    {'bias': ('hidden0',), 'kernel': ('input', 'hidden0')}
  """
  _io_label(io, "input")
  layers = _layers(params, "mlp_space")
  for path, layer in layers:
    if np.ndim(layer["kernel"]) != 2:
      raise ValueError(
        f"mlp_space: {path_str(path)!r} kernel has shape {np.shape(layer['kernel'])}; expected (in, out)."
      )
  _check_order(layers, "mlp_space")
  return _bind(_chain(layers, _hidden_chain(layers, io)), params, "mlp_space")


def cnn_space(params: Any, *, io: str = "permutable") -> WeightSpace:
  """The weight space of a CNN: conv layers, a global average pool, then dense layers.

  Conv kernels have flax's layout ``(*spatial, in, out)``, e.g. HWIO
  ``(kh, kw, in, out)``, and biases ``(out,)``; dense kernels are (in, out).
  Convs come first and dense layers after, each group in the natural order of
  their paths. Channels are chained as in :func:`mlp_space` (``hidden{k}`` between layer k and k+1);
  spatial kernel axes are always fixed (None).

  Flatten-then-dense is not supported: flattening mixes spatial positions into
  the dense layer's input axis, which no channel label describes. Pool over
  space first (``x.mean(axis=(1, 2))``).

  Args:
    params: the CNN's params as a nested dict.
    io: ``"permutable"`` labels the input channels ``"input"`` and the output
      classes ``"output"``; ``"fixed"`` makes them None.

  Returns:
    The weight space, bound to the params' sizes.

  Raises:
    ValueError: on a bad ``io``, a leaf outside a layer, a kernel of rank < 2,
      or channel counts that disagree (e.g. flatten-then-dense).
  """
  _io_label(io, "input")
  layers = _layers(params, "cnn_space")
  for path, layer in layers:
    if np.ndim(layer["kernel"]) < 2:
      raise ValueError(f"cnn_space: {path_str(path)!r} kernel has rank {np.ndim(layer['kernel'])}; expected >= 2.")
  layers.sort(key=lambda item: (np.ndim(item[1]["kernel"]) == 2, _natural_key(item[0])))
  _check_order([layer for layer in layers if np.ndim(layer[1]["kernel"]) > 2], "cnn_space", "convs")
  _check_order([layer for layer in layers if np.ndim(layer[1]["kernel"]) == 2], "cnn_space", "dense layers")
  hint = " (cnn_space needs global pooling between convs and dense layers; flatten-then-dense is not supported.)"
  return _bind(_chain(layers, _hidden_chain(layers, io)), params, "cnn_space", hint)


# --- recurrent networks -----------------------------------------------------------


def split_gates(cell_params: Mapping, num_gates: int) -> dict:
  """Splits a cell's fused gate axis: kernels (in, G*H) -> (in, G, H), biases (G*H,) -> (G, H).

  ``nnx.GRUCell`` (G = 3: r, z, n) and ``nnx.OptimizedLSTMCell`` (G = 4: i, f,
  g, o) compute all gates with one Linear per source and cut its output with
  ``jnp.split(y, G, axis=-1)``: gate g is the contiguous block of columns
  ``g*H:(g+1)*H``, which is ``reshape(in, G, H)[:, g]``. In split form the
  hidden axis has its own dimension and can carry the ``"hidden"`` label.
  Inverse: :func:`merge_gates`.

  Args:
    cell_params: the cell's params dict, e.g. an ``nnx.GRUCell``'s ``{"dense_i": {"kernel": (E, 3H), "bias":
      (3H,)}, "dense_h": {"kernel": (H, 3H)}}`` (shapes shown).
    num_gates: G, the number of fused gates.

  Returns:
    A new dict with every kernel and bias split.
  """
  out: dict[Any, dict] = {}
  for name, linear in cell_params.items():
    out[name] = {}
    for entry, value in linear.items():
      size = value.shape[-1]
      if size % num_gates:
        raise ValueError(f"split_gates: {name}/{entry} has last axis {size}, not divisible into {num_gates} gates.")
      out[name][entry] = jnp.reshape(value, value.shape[:-1] + (num_gates, size // num_gates))
  return out


def merge_gates(cell_params: Mapping) -> dict:
  """Inverse of :func:`split_gates`: kernels (in, G, H) -> (in, G*H), biases (G, H) -> (G*H,).

  Args:
    cell_params: a cell's params with gates split (as :func:`split_gates` gives them).

  Returns:
    The params with every gate axis fused back, as the cell stores them.
  """
  out: dict[Any, dict] = {}
  for name, linear in cell_params.items():
    out[name] = {}
    for entry, value in linear.items():
      split = value.ndim == (3 if entry == "kernel" else 2)
      out[name][entry] = jnp.reshape(value, value.shape[:-2] + (-1,)) if split else value
  return out


def _cell_spec(cell: Any, where: Path) -> dict:
  if not isinstance(cell, Mapping) or not cell:
    raise ValueError(f"rnn_space: {path_str(where)!r} must be a dict of the cell's Linears.")
  unknown = sorted(map(str, set(cell) - _CELL_INPUT - _CELL_HIDDEN))
  if unknown:
    raise ValueError(
      f"rnn_space: cell {path_str(where)!r} has entries {unknown} that are not those of nnx.SimpleCell "
      f"(dense_i, dense_h), nnx.LSTMCell (ii, if_, ig, io, hi, hf, hg, ho) or a GRU cell in split form."
    )
  hidden_sizes = [np.shape(v["kernel"])[0] for k, v in cell.items() if k in _CELL_HIDDEN and "kernel" in v]
  spec = {}
  for name, linear in cell.items():
    source = "embed" if name in _CELL_INPUT else "hidden"
    path = where + (name,)
    kernel = np.shape(linear.get("kernel", ())) if isinstance(linear, Mapping) else ()
    if len(kernel) == 2 and hidden_sizes and kernel[1] != hidden_sizes[0] and kernel[1] % hidden_sizes[0] == 0:
      gates = kernel[1] // hidden_sizes[0]
      raise ValueError(
        f"rnn_space: {path_str(path)!r} kernel has shape {kernel}: {gates} gates of {hidden_sizes[0]} hidden units "
        "fused along one axis (nnx.GRUCell / nnx.OptimizedLSTMCell), which no single label describes. Pass "
        f"split_gates(cell_params, {gates}) from unf.builders and undo it with merge_gates in your apply function."
      )
    gate = (None,) if len(kernel) == 3 else ()
    spec[name] = _entries(linear, path, ("kernel",), kernel=(source, *gate, "hidden"), bias=(*gate, "hidden"))
  return spec


def rnn_space(
  params: Any, *, io: str = "permutable", embed: str = "embed", cell: str = "cell", head: str = "head"
) -> WeightSpace:
  """The weight space of a recurrent language model: embedding, one nnx RNN cell, and a linear head.

  Labels: the embedding ``params[embed]["embedding"]`` is (vocab, ``"embed"``);
  the cell's input kernels are (``"embed"``, ``"hidden"``) and its recurrent
  kernels (``"hidden"``, ``"hidden"``): both axes of a recurrent matrix share
  one label, since the hidden state feeds back into itself, and all gates
  share the hidden label; biases are (``"hidden"``,). The head
  ``params[head]`` is a Linear (``"hidden"``, vocab). The vocabulary axes (of
  embedding and head alike) are ``"vocab"`` with ``io="permutable"``, None with
  ``io="fixed"``.

  Supported cells: ``nnx.SimpleCell`` (an IRNN is a SimpleCell with identity
  recurrent init: same params), ``nnx.LSTMCell``, and ``nnx.GRUCell`` or
  ``nnx.OptimizedLSTMCell`` in split form (:func:`split_gates`), whose gate
  axis is fixed: kernels (source, None, ``"hidden"``), biases (None,
  ``"hidden"``). Fused GRU / OptimizedLSTM params are refused.

  Args:
    params: the model's params as a nested dict.
    io: ``"permutable"`` or ``"fixed"``, for the vocabulary axes.
    embed: key of the ``nnx.Embed`` params.
    cell: key of the cell params; a path for a nested cell (``"rnn/cell"`` for an ``nnx.RNN`` at ``rnn``).
    head: key of the output ``nnx.Linear`` params.

  Returns:
    The weight space, bound to the params' sizes.

  Raises:
    ValueError: on a bad ``io``, missing or unknown entries, fused gates, or
      sizes that disagree.
  """
  vocab = _io_label(io, "vocab")
  spec: dict = {}
  parts = [
    (embed, _entries(_get(params, embed, "rnn_space"), (embed,), ("embedding",), embedding=(vocab, "embed"))),
    (cell, _cell_spec(_get(params, cell, "rnn_space"), (cell,))),
    (head, _entries(_get(params, head, "rnn_space"), (head,), ("kernel",), kernel=("hidden", vocab), bias=(vocab,))),
  ]
  for key, part in parts:
    _set(spec, tuple(key.split("/")), part)
  return _bind(spec, params, "rnn_space")


# --- transformers ---------------------------------------------------------------


def _norm(node: Any, where: Path, label: str) -> dict:
  return _entries(node, where, scale=(label,), bias=(label,))


def _mlp_order(linears: list[tuple[Path, Any]], width: int, where: Path) -> list[tuple[Path, Any]]:
  """The block's two Linears as (up, down): told apart by shape, else by the numbers in their paths."""
  shapes = [np.shape(linear["kernel"]) for _, linear in linears]
  ups = [k for k, shape in enumerate(shapes) if shape[0] == width and shape[-1] != width]
  if len(ups) == 1 and shapes[1 - ups[0]][-1] == width:
    return [linears[ups[0]], linears[1 - ups[0]]]
  _check_order(
    linears, "transformer_space", f"MLP Linears of block {path_str(where)!r} (square: not told apart by shape)"
  )
  return linears


def _block_spec(block: Any, where: Path, b: int) -> dict:
  """One pre- or post-LN block: an nnx.MultiHeadAttention, LayerNorms, and a two-Linear MLP."""
  r, heads, qk, v, mlp = "residual", f"heads{b}", f"qk{b}", f"v{b}", f"mlp{b}"
  attentions, linears = [], []
  spec: dict = {}

  def walk(node: Mapping, prefix: Path) -> None:
    for path, child in _children(node, prefix):
      if isinstance(child, Mapping) and _ATTENTION <= set(child):
        attentions.append((path, child))
      elif isinstance(child, Mapping) and "kernel" in child:
        linears.append((path, child))
      elif isinstance(child, Mapping) and child and set(child) <= {"scale", "bias"}:
        _set(spec, path, _norm(child, where + path, r))
      elif isinstance(child, Mapping):
        walk(child, path)
      else:
        raise ValueError(f"transformer_space: leaf {path_str(where + path)!r} is not in an attention, norm or Linear.")

  walk(block if isinstance(block, Mapping) else {}, ())
  if len(attentions) != 1 or len(linears) != 2:
    raise ValueError(
      f"transformer_space: block {path_str(where)!r} must hold one nnx.MultiHeadAttention (entries query, key, "
      f"value, out) and an MLP of two Linears; found {len(attentions)} attentions and {len(linears)} Linears."
    )
  path, attention = attentions[0]
  at = where + path
  parts = {
    name: _entries(attention[name], at + (name,), ("kernel",), kernel=(r, heads, dim), bias=(heads, dim))
    for name, dim in (("query", qk), ("key", qk), ("value", v))
  }
  parts["out"] = _entries(attention["out"], at + ("out",), ("kernel",), kernel=(heads, v, r), bias=(r,))
  for name in set(attention) - _ATTENTION:
    if name not in ("query_ln", "key_ln"):
      raise ValueError(f"transformer_space: unexpected attention entry {path_str(at + (name,))!r}.")
    parts[name] = _norm(attention[name], at + (name,), qk)  # QK-norm acts on the head dim
  _set(spec, path, parts)
  linears = _mlp_order(linears, np.shape(attention["query"]["kernel"])[0], where)
  for (path, linear), (source, target) in zip(linears, ((r, mlp), (mlp, r))):
    _set(spec, path, _entries(linear, where + path, ("kernel",), kernel=(source, target), bias=(target,)))
  return spec


def transformer_space(
  params: Any,
  *,
  io: str = "permutable",
  embed: str = "embed",
  pos_embed: str = "pos_embed",
  blocks: str = "blocks",
  final_norm: str = "final_norm",
  head: str = "head",
) -> WeightSpace:
  """The weight space of a decoder-only transformer language model built from nnx modules.

  Labels: the residual stream is one label, ``"residual"``, shared by the
  token embedding (vocab, ``"residual"``), the optional positional embedding
  (position, ``"residual"``), every block, every LayerNorm's scale and bias,
  and the head (``"residual"``, vocab). It cannot differ between blocks: the
  residual connections add the streams of all blocks elementwise. In block b
  (natural order of ``params[blocks]``'s keys, from 0), the
  ``nnx.MultiHeadAttention`` (the dict with entries query, key, value, out)
  has query and key kernels (``"residual"``, ``"heads{b}"``, ``"qk{b}"``),
  biases (``"heads{b}"``, ``"qk{b}"``); value kernel (``"residual"``,
  ``"heads{b}"``, ``"v{b}"``); out kernel (``"heads{b}"``, ``"v{b}"``,
  ``"residual"``), bias (``"residual"``); optional QK-norm scales (``"qk{b}"``).
  The block's two Linears are the MLP, told apart by shape (or, when both are
  square, by the numbers in their paths): (``"residual"``, ``"mlp{b}"``) then (``"mlp{b}"``,
  ``"residual"``). Any other dict of scale / bias in the block is a LayerNorm
  of the residual stream. Vocabulary and position axes are ``"vocab"`` and
  ``"position"`` with ``io="permutable"``, None with ``io="fixed"``.

  Args:
    params: the model's params as a nested dict.
    io: ``"permutable"`` or ``"fixed"``, for the vocabulary and position axes.
    embed: key of the token ``nnx.Embed``.
    pos_embed: key of the positional ``nnx.Embed`` (optional: skipped if absent).
    blocks: key of the dict (or ``nnx.List``) of blocks.
    final_norm: key of the final ``nnx.LayerNorm``.
    head: key of the output ``nnx.Linear``.

  Returns:
    The weight space, bound to the params' sizes.

  Raises:
    ValueError: on a bad ``io``, missing or unknown entries, a block without
      exactly one attention and two Linears, or sizes that disagree.
  """
  vocab, position = _io_label(io, "vocab"), _io_label(io, "position")
  name = "transformer_space"
  known = {embed, pos_embed, blocks, final_norm, head}
  unknown = sorted(map(str, set(params) - known)) if isinstance(params, Mapping) else []
  if unknown:
    raise ValueError(f"{name}: unexpected top-level entries {unknown}; expected {sorted(known)}.")
  block_nodes = _get(params, blocks, name)
  if not isinstance(block_nodes, Mapping) or not block_nodes:
    raise ValueError(f"{name}: params[{blocks!r}] must be a non-empty dict of blocks.")
  spec = {
    embed: _entries(_get(params, embed, name), (embed,), ("embedding",), embedding=(vocab, "residual")),
    blocks: {path[-1]: _block_spec(node, path, b) for b, (path, node) in enumerate(_children(block_nodes, (blocks,)))},
    final_norm: _norm(_get(params, final_norm, name), (final_norm,), "residual"),
    head: _entries(_get(params, head, name), (head,), ("kernel",), kernel=("residual", vocab), bias=(vocab,)),
  }
  if pos_embed in params:
    spec[pos_embed] = _entries(params[pos_embed], (pos_embed,), ("embedding",), embedding=(position, "residual"))
  return _bind(spec, params, name)
