"""UNFLOpt's ``fixed_axes``: small on an ordinary MNIST CNN, unchanged on the paper's four tasks, still equivariant."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import tasks
import unf
from metatrain import learned_optimizers as lopt
from unf.testing import assert_equivariant, random_features


class MnistCNN(nn.Module):
  """Two convs (the second strided), a flatten, then Dense(32) and a 10-class Dense head."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(32)(x))
    return nn.Dense(10)(x)


def _cnn_space(image=28):
  x = jnp.ones((2, image, image, 1))
  params = MnistCNN().init(jax.random.key(0), x)["params"]
  return unf.infer_space(lambda p, x: MnistCNN().apply({"params": p}, x), params, x), params


def _count(learned):
  return learned.num_meta_parameters(jax.eval_shape(lambda: learned.init_meta(jax.random.key(0))))


def test_unf_on_an_mnist_cnn_has_fewer_than_100k_meta_parameters():
  space, _ = _cnn_space()
  assert 3136 in space.fixed_sizes[space.paths.index(("Dense_0", "kernel"))]  # the flattened input axis is fixed
  learned = lopt.UNFLOpt(space)
  count = _count(learned)
  # 3 scalars, Dense 19 -> 32 and Dense 32 -> 32, then the equivariant last layer, counted before building it.
  assert count == 3 + (19 * 32 + 32) + (32 * 32 + 32) + unf.parameter_count(space, space, 32, 1)
  assert count < 100_000
  # Mixing every fixed axis like channels, the last layer alone has hundreds of millions.
  assert unf.parameter_count(space, space, 32, 1, fixed_axes="mix") > 100_000_000


# The meta-parameter counts of the paper's four tasks (default options), which "auto" must leave as "mix" has them.
PAPER_TASK_COUNTS = {"mlp_fashion8": 2727, "cnn_fashion16": 40569, "rnn_lm": 5002, "transformer_lm": 84553}


@pytest.mark.parametrize("name", sorted(PAPER_TASK_COUNTS))
def test_paper_tasks_keep_their_meta_parameter_counts(name):
  space = tasks.get(name).space
  assert unf.basis.label_fixed_axes(space, space).space_in is space  # nothing labelled: the same layer
  assert _count(lopt.UNFLOpt(space)) == _count(lopt.UNFLOpt(space, fixed_axes="mix")) == PAPER_TASK_COUNTS[name]


def test_bounded_unf_update_is_equivariant(key):
  space, params = _cnn_space(image=8)  # a 64-position flatten: labelled, as at 28x28
  assert unf.basis.label_fixed_axes(space, space).sizes
  learned = lopt.UNFLOpt(space, width=4)
  theta = learned.init_meta(key)
  sizes = space.validate(params)
  x = random_features(space, sizes, learned.num_features, key, dtype=jnp.float32)
  f = jax.jit(lambda t: jax.tree.map(lambda y: y[..., None], learned.f(theta, t)))
  assert_equivariant(f, space, key, x)


@pytest.mark.parametrize("fixed_axes", ["bounded", 0])
def test_unf_refuses_a_bad_fixed_axes(fixed_axes):
  with pytest.raises(ValueError, match="choose one of"):
    lopt.UNFLOpt(
      unf.mlp_space({"layers": {0: {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}}), fixed_axes=fixed_axes
    )
