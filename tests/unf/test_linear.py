"""unf.linear.transfer: a layer moved to renamed spaces computes the same map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unf
from tests.unf.spaces import MLP, SPACES, bound, fixed_sizes, sizes_for, specs
from unf import linear
from unf.testing import random_features


def _random_params(space_in, space_out, in_features, out_features, seed=0, fixed_axes="auto"):
  """Params shaped like init's, every entry N(0, 1): init's zero biases and equal blocks would hide a mix-up."""
  shapes = jax.eval_shape(
    lambda k: linear.init(k, space_in, space_out, in_features, out_features, dtype=jnp.float64, fixed_axes=fixed_axes),
    jax.random.key(0),
  )
  rng = np.random.default_rng(seed)  # numpy: nothing to compile per shape
  return {name: jnp.asarray(rng.standard_normal(s.shape)) for name, s in shapes.items()}


def _apply(params, x, space_in, space_out, out_sizes, fixed_axes="auto"):
  return jax.jit(lambda p, t: linear.apply(p, t, space_in, space_out, out_sizes=out_sizes, fixed_axes=fixed_axes))(
    params, x
  )


def _rename(space, renaming, paths):
  """``space`` with labels renamed and leaf ``i`` moved to ``paths[i]`` (fixed sizes kept)."""
  spec, fixed = {}, {}
  for path, axes, sizes in zip(paths, space.axes, space.fixed_sizes):
    node = spec
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = tuple(None if a is None else renaming[a] for a in axes)
    if sizes is not None:
      fixed[path] = sizes
  renamed = unf.WeightSpace(spec, fixed_sizes=fixed)
  assert renamed.paths == tuple(paths), "the new paths must keep the leaves in order"
  return renamed


def _assert_same_map(params, space_in, space_out, new_in, new_out, sizes, in_features, key, fixed_axes="auto"):
  moved = linear.transfer(params, space_in, space_out, new_in, new_out, fixed_axes=fixed_axes)
  x = random_features(space_in, sizes, in_features, key)
  x_new = new_in.unflatten(space_in.flatten(x))
  renaming = {**space_in.match(new_in), **space_out.match(new_out)}
  out_only = {label: sizes[label] for label in space_out.labels if label not in space_in.labels}
  y = _apply(params, x, space_in, space_out, out_only, fixed_axes)
  y_new = _apply(moved, x_new, new_in, new_out, {renaming[a]: n for a, n in out_only.items()}, fixed_axes)
  for path, a, b in zip(space_out.paths, space_out.flatten(y), new_out.flatten(y_new)):
    np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=f"output leaf {path}")
  return moved


def _naive_rename(params, space_out, new_out, renaming):
  """Only the names renamed, blocks left in place: what transfer must do better than."""
  paths = {unf.space.path_str(a): unf.space.path_str(b) for a, b in zip(space_out.paths, new_out.paths)}
  out = {}
  for name, value in params.items():
    path, rest = name.split("|")
    rest = rest if rest in ("-", "bias") else ",".join(renaming[a] for a in rest.split(","))
    out[f"{paths[path]}|{rest}"] = value
  return out


# Labels renamed to reverse alphabetical order, layers moved to int keys.
MLP_REVERSED = {"hidden0": "z", "hidden1": "y", "input": "x", "output": "w"}


def test_transfer_mlp_with_labels_in_reverse_order(key):
  space = bound(MLP)
  paths = [("layers", i // 2, "bias" if i % 2 == 0 else "kernel") for i in range(6)]
  new = _rename(space, MLP_REVERSED, paths)
  assert sorted(new.labels) == ["w", "x", "y", "z"]
  params = _random_params(space, space, 2, 3)
  moved = _assert_same_map(params, space, space, new, new, sizes_for(space), 2, key)
  naive = _naive_rename(params, space, new, MLP_REVERSED)
  assert {name: v.shape for name, v in moved.items()} == {name: v.shape for name, v in naive.items()}
  # And back again, exactly.
  back = linear.transfer(moved, new, new, space, space)
  assert all(np.array_equal(back[name], params[name]) for name in params)


def test_transfer_permutes_blocks_where_label_order_matters(key):
  # Blocks move only when one leaf holds two labels with several axes each: the basis enumerates
  # the partitions of sorted labels, and their product comes in another order (the MLP's does not).
  space = bound({"t": ("a", "a", "b", "b"), "v": ("b",)})
  renaming = {"a": "z", "b": "c"}
  new = _rename(space, renaming, [("t",), ("v",)])
  params = _random_params(space, space, 1, 2)
  moved = _assert_same_map(params, space, space, new, new, {"a": 2, "b": 3}, 1, key)
  naive = _naive_rename(params, space, new, renaming)
  assert moved.keys() == naive.keys() and any(not np.array_equal(moved[k], naive[k]) for k in moved)
  x = random_features(space, {"a": 2, "b": 3}, 1, key)
  y, y_naive = _apply(params, x, space, space, None), _apply(naive, new.unflatten(space.flatten(x)), new, new, None)
  assert not np.allclose(y["t"], y_naive["t"])


def test_transfer_renamed_transformer(key):
  space = bound(SPACES["transformer"])
  renaming = {label: f"l{len(space.labels) - i:02d}" for i, label in enumerate(space.labels)}
  new = _rename(space, renaming, [(f"t{i:02d}",) for i in range(len(space))])
  _assert_same_map(_random_params(space, space, 1, 2), space, space, new, new, sizes_for(space), 1, key)


def test_transfer_between_different_spaces_with_shared_and_own_labels(key):
  space_in = bound({"w": ("a", "b"), "v": ("b",)})
  space_out = bound({"u": ("b", "c", "b"), "s": ()})
  renaming = {"a": "q", "b": "p", "c": "o"}
  new_in = _rename(space_in, renaming, [("n", 0), ("n", 1)])
  new_out = _rename(space_out, renaming, [(0,), (1,)])
  params = _random_params(space_in, space_out, 2, 1)
  _assert_same_map(params, space_in, space_out, new_in, new_out, {"a": 2, "b": 3, "c": 2}, 2, key)


LABEL_NAMES = ["zz", "m", "a", "q0", "b", "hidden"]


@st.composite
def renamed_pairs(draw):
  """(space_in, space_out, new_in, new_out): random spaces with all fixed sizes, renamed at random."""
  spaces = []
  for _ in range(2):
    space = unf.WeightSpace(draw(specs(keys=st.sampled_from(["kernel", "bias", "0"]), max_entries=2)))
    spaces.append(unf.WeightSpace(space.spec(), fixed_sizes=draw(fixed_sizes(space, known=True))))
  if draw(st.booleans()):
    # Two labels with two axes each in one leaf: the case where renaming reorders blocks.
    tied = draw(st.permutations(["a", "b", "c"]))[:2]
    spaces[0] = bound({"tied": (tied[0], tied[0], tied[1], tied[1]), "rest": spaces[0].spec()})
  if draw(st.booleans()):
    spaces[1] = spaces[0]
  labels = sorted(set(spaces[0].labels) | set(spaces[1].labels))
  renaming = dict(zip(labels, draw(st.permutations(LABEL_NAMES))))
  renamed = []
  for space in spaces:
    style = draw(st.sampled_from(["int", "nested", "same"]))
    paths = {
      "int": [(i,) for i in range(len(space))],  # ints sort by value: the order is kept
      "nested": [("net", f"p{i:02d}", "w") for i in range(len(space))],
      "same": list(space.paths),
    }[style]
    renamed.append(_rename(space, renaming, paths))
  return (*spaces, *renamed)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spaces=renamed_pairs(), data=st.data())
def test_transfer_random_spaces_and_renamings(spaces, data, key):
  # Fixed axes mixed: the new paths pair input and output leaves at random, which labelled fixed axes do
  # not allow (test_transfer_with_labelled_fixed_axes).
  space_in, space_out, new_in, new_out = spaces
  sizes = {label: data.draw(st.integers(1, 3)) for label in sorted(set(space_in.labels) | set(space_out.labels))}
  in_features, out_features = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
  params = _random_params(space_in, space_out, in_features, out_features, fixed_axes="mix")
  moved = _assert_same_map(params, space_in, space_out, new_in, new_out, sizes, in_features, key, fixed_axes="mix")
  back = linear.transfer(moved, new_in, new_out, space_in, space_out, fixed_axes="mix")
  assert back.keys() == params.keys() and all(np.array_equal(back[k], params[k]) for k in params)


# A Dense layer after a flatten (24 positions) and an 11-class head: "auto" labels both fixed axes.
FLATTENED = unf.WeightSpace(
  {"dense": {"kernel": (None, "h"), "bias": ("h",)}, "head": {"kernel": ("h", None), "bias": ("out",)}},
  fixed_sizes={("dense", "kernel"): (24, None), ("head", "kernel"): (None, 11)},
)


def test_transfer_with_labelled_fixed_axes(key):
  renaming = {"h": "hidden", "out": "classes"}
  paths = [("net", "d0", "b"), ("net", "d0", "w"), ("net", "d1", "b"), ("net", "d1", "w")]
  new = _rename(FLATTENED, renaming, paths)
  assert unf.basis.label_fixed_axes(FLATTENED, FLATTENED).sizes == (("dense/kernel[0]", 24), ("head/kernel[1]", 11))
  params = _random_params(FLATTENED, FLATTENED, 2, 1)
  moved = _assert_same_map(params, FLATTENED, FLATTENED, new, new, {"h": 3, "out": 11}, 2, key)
  assert "net/d0/w|net/d0/w[0],hidden" in moved and "dense/kernel|dense/kernel[0],h" in params
  back = linear.transfer(moved, new, new, FLATTENED, FLATTENED)
  assert all(np.array_equal(back[name], params[name]) for name in params)


def test_transfer_refuses_paths_that_pair_labelled_fixed_axes_otherwise():
  """The same leaves, but the output's paths no longer those of the input: its labelled axes would not be shared."""
  params = _random_params(FLATTENED, FLATTENED, 2, 1)
  new_in = _rename(FLATTENED, {"h": "h", "out": "out"}, [("a",), ("b",), ("c",), ("d",)])
  new_out = _rename(FLATTENED, {"h": "h", "out": "out"}, [("e",), ("f",), ("g",), ("i",)])
  with pytest.raises(ValueError, match=r"fixed_axes='auto', long fixed axes get labels of their own.*fixed_axes='mix'"):
    linear.transfer(params, FLATTENED, FLATTENED, new_in, new_out)
  mixed = _random_params(FLATTENED, FLATTENED, 2, 1, fixed_axes="mix")
  linear.transfer(mixed, FLATTENED, FLATTENED, new_in, new_out, fixed_axes="mix")  # mixed, the pairing is free


# --- refusals --------------------------------------------------------------------------

SPACE = bound({"w": ("a", "b"), "v": ("b",)})


def _params():
  return linear.init(jax.random.key(0), SPACE, SPACE, 2, 3, dtype=jnp.float64)


@pytest.mark.parametrize(
  "new_in, new_out, match",
  [
    (bound({"w": ("a", "b")}), SPACE, r"2 leaves against 1"),
    (bound({"w": ("a", "a"), "v": ("a",)}), SPACE, r"labels 'b' and 'a' would both be 'a'"),
    (bound({"w": ("x", "y"), "v": ("y",)}), SPACE, r"label 'b' of both space_in and space_out becomes 'y'.* but 'b'"),
  ],
)
def test_transfer_refuses_spaces_that_do_not_match(new_in, new_out, match):
  with pytest.raises(ValueError, match=match):
    linear.transfer(_params(), SPACE, SPACE, new_in, new_out)


def test_transfer_refuses_to_tie_distinct_labels():
  space_in, space_out = bound({"x": ("a",)}), bound({"y": ("b",)})
  params = linear.init(jax.random.key(0), space_in, space_out, 1, 1)
  new_in, new_out = bound({"x": ("c",)}), bound({"y": ("c",)})
  with pytest.raises(ValueError, match=r"labels 'a' and 'b' are distinct .* both become 'c'"):
    linear.transfer(params, space_in, space_out, new_in, new_out)


def test_transfer_refuses_params_of_another_layer():
  params = _params()
  with pytest.raises(ValueError, match=r"missing \['w\|a,b'\]; extra \['w\|x'\]"):
    linear.transfer({**{k: v for k, v in params.items() if k != "w|a,b"}, "w|x": 0}, SPACE, SPACE, SPACE, SPACE)
  bad = {**params, "v|bias": jnp.zeros(5)}
  with pytest.raises(ValueError, match=r"param 'v\|bias' has shape \(5,\), but .* 2 in and 3 out features"):
    linear.transfer(bad, SPACE, SPACE, SPACE, SPACE)
