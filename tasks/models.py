"""The inner networks, as flax nnx modules laid out the way the ``unf`` builders read them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

Activation = Callable[[jax.Array], jax.Array]


class MLP(nnx.Module):
  """A multilayer perceptron on flattened inputs: ``sizes = (in, hidden..., out)``."""

  def __init__(self, sizes: Sequence[int], *, activation: Activation = jax.nn.relu, rngs: nnx.Rngs):
    self.activation = activation
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for k, layer in enumerate(self.layers):
      x = layer(x)
      if k < len(self.layers) - 1:
        x = self.activation(x)
    return x


def conv_as_matmul(conv: nnx.Conv, x: jax.Array) -> jax.Array:
  """``conv(x)`` for a stride-2, SAME-padded ``nnx.Conv``, computed as image patches times the kernel.

  Same params and result as ``conv(x)``. XLA on CPU runs a convolution inside a
  while loop (every ``lax.scan`` unroll) through a slow path: a
  ``cnn_fashion16`` training step measured 14 ms there against 0.8 ms outside
  a loop; as patches and a matrix product it takes 1.7 ms in the loop.
  """
  kernel = conv.kernel[...]
  # nnx.Conv types strides and padding as any accepted input; here they are a tuple and "SAME".
  patches = jax.lax.conv_general_dilated_patches(
    x,
    kernel.shape[:2],
    conv.strides,  # type: ignore[arg-type]
    conv.padding,  # type: ignore[arg-type]
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  # Patch features are ordered (in_channels, kh, kw).
  weights = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(-1, kernel.shape[-1])
  return patches @ weights + conv.bias[...]  # type: ignore[index]  # the bias is None only with use_bias=False


class CNN(nnx.Module):
  """3x3 stride-2 convolutions, global average pooling and a dense head (NHWC inputs)."""

  def __init__(
    self,
    in_channels: int,
    channels: Sequence[int],
    num_classes: int,
    *,
    activation: Activation = jax.nn.relu,
    rngs: nnx.Rngs,
  ):
    self.activation = activation
    sizes = [in_channels, *channels]
    self.convs = nnx.List(
      [nnx.Conv(a, b, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
    )
    self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv in self.convs:
      x = self.activation(conv_as_matmul(conv, x))
    return self.head(jnp.mean(x, axis=(1, 2)))


def _identity(key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike = jnp.float32) -> jax.Array:
  del key
  return jnp.eye(shape[0], shape[1], dtype=dtype)


class RNNLM(nnx.Module):
  """A character-level recurrent language model: embed -> cell (scanned over time) -> head.

  ``cell="irnn"``: a ReLU ``nnx.SimpleCell`` with identity-initialised recurrent
  matrix (Le et al. 2015); ``cell="lstm"``: ``nnx.LSTMCell``.
  """

  def __init__(self, vocab_size: int, embed: int, hidden: int, *, cell: str = "irnn", rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab_size, embed, rngs=rngs)
    if cell == "irnn":
      self.cell: nnx.SimpleCell | nnx.LSTMCell = nnx.SimpleCell(
        embed, hidden, activation_fn=jax.nn.relu, recurrent_kernel_init=_identity, rngs=rngs
      )
    elif cell == "lstm":
      self.cell = nnx.LSTMCell(embed, hidden, rngs=rngs)
    else:
      raise ValueError(f"unknown cell {cell!r}; choose 'irnn' or 'lstm'.")
    self.hidden = hidden
    self.head = nnx.Linear(hidden, vocab_size, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    inputs = self.embed(tokens)  # (batch, time, embed)
    zeros = jnp.zeros((tokens.shape[0], self.hidden), inputs.dtype)
    carry = (zeros, zeros) if isinstance(self.cell, nnx.LSTMCell) else zeros

    def step(carry, x):
      return self.cell(carry, x)

    _, outputs = jax.lax.scan(step, carry, jnp.swapaxes(inputs, 0, 1))
    return self.head(jnp.swapaxes(outputs, 0, 1))


class Block(nnx.Module):
  """A pre-LayerNorm transformer block: causal self-attention and an MLP, each residual."""

  def __init__(self, d_model: int, num_heads: int, mlp: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(d_model, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(
      num_heads=num_heads, in_features=d_model, qkv_features=d_model, decode=False, rngs=rngs
    )
    self.norm2 = nnx.LayerNorm(d_model, rngs=rngs)
    self.mlp = nnx.Sequential(nnx.Linear(d_model, mlp, rngs=rngs), nnx.gelu, nnx.Linear(mlp, d_model, rngs=rngs))

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attention(self.norm1(x), mask=mask)
    return x + self.mlp(self.norm2(x))


class TransformerLM(nnx.Module):
  """A decoder-only transformer language model with learned positional embeddings."""

  def __init__(
    self, vocab_size: int, *, d_model: int, num_heads: int, mlp: int, num_blocks: int, max_len: int, rngs: nnx.Rngs
  ):
    self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
    self.pos_embed = nnx.Embed(max_len, d_model, rngs=rngs)
    self.blocks = nnx.List([Block(d_model, num_heads, mlp, rngs=rngs) for _ in range(num_blocks)])
    self.final_norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.head = nnx.Linear(d_model, vocab_size, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens) + self.pos_embed.embedding[: tokens.shape[-1]]
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.head(self.final_norm(x))
