"""Classifier heads on feature vectors (Flax NNX).

* :class:`ExStreamMLP`: the reference ExStream head (tyler-hayes/ExStream, CUB-200 settings):
  MLP [d, 350, 300, K], each hidden layer Linear -> BatchNorm -> ELU -> Dropout(0.25), then a
  linear output layer. Weights Glorot-normal (untruncated, std sqrt(2 / (fan_in + fan_out))),
  biases 1, as the reference initialises them. BatchNorm momentum 0.9 and epsilon 1e-5 are PyTorch's
  ``BatchNorm1d`` defaults written in Flax's convention (Flax keeps ``momentum`` of the old
  statistic; PyTorch's 0.1 is the weight of the new one).
* :class:`LinearHead`: one linear layer, the head ExStream uses on deep features.

Both optionally L2-normalise their inputs (the reference normalises every feature vector to unit
norm). The ExStream learner normalises *before* buffering, as the reference data loader does, and
builds its head with ``l2_normalize=False`` so merged centroids are trained on as stored.

Dropout takes its key at call time (``dropout_key``), so the module holds no RNG state and
``nnx.split(model, nnx.Param, nnx.BatchStat)`` covers all of it.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_EPS = 1e-12


def l2_normalize(x: jax.Array) -> jax.Array:
  """Rows of ``x`` [B, d] divided by their Euclidean norm (zero rows stay zero)."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, _EPS)


def _glorot_normal():
  # The reference draws N(0, 2 / (fan_in + fan_out)) without truncation.
  return nnx.initializers.variance_scaling(1.0, "fan_avg", "normal")


class ExStreamMLP(nnx.Module):
  """The reference ExStream MLP head.

  Args:
    in_dim: feature size d.
    num_classes: K outputs.
    hidden: hidden layer widths (reference: (350, 300)).
    dropout: dropout rate after each hidden layer (reference: 0.25).
    l2_normalize: divide inputs by their L2 norm first.
    rngs: parameter initialisation keys.
  """

  def __init__(self, in_dim: int, num_classes: int, *, hidden: Sequence[int] = (350, 300),
               dropout: float = 0.25, l2_normalize: bool = True, rngs: nnx.Rngs):
    self.l2_normalize = l2_normalize
    dims = [in_dim, *hidden]
    self.linears = nnx.List([
        nnx.Linear(a, b, kernel_init=_glorot_normal(), bias_init=nnx.initializers.constant(1.0),
                   rngs=rngs) for a, b in zip(dims[:-1], dims[1:])
    ])
    self.norms = nnx.List([
        nnx.BatchNorm(b, momentum=0.9, epsilon=1e-5, rngs=rngs) for b in dims[1:]
    ])
    self.dropout = nnx.Dropout(dropout)
    self.out = nnx.Linear(dims[-1], num_classes, kernel_init=_glorot_normal(),
                          bias_init=nnx.initializers.constant(1.0), rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, mask: jax.Array | None = None,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Logits [B, K] of features ``x`` [B, d].

    Args:
      x: [B, d] features.
      train: batch statistics (and their running averages are updated) and dropout if True;
        running statistics and no dropout if False.
      mask: [B] bool rows that count in the batch statistics (padding rows excluded); train only.
      dropout_key: PRNG key for dropout; required when ``train`` and dropout > 0.
    """
    if self.l2_normalize:
      x = l2_normalize(x)
    bn_mask = None if mask is None else mask[:, None]
    keys = (jax.random.split(dropout_key, len(self.linears)) if train and dropout_key is not None
            else [None] * len(self.linears))
    for linear, norm, key in zip(self.linears, self.norms, keys):
      x = linear(x)
      x = norm(x, use_running_average=not train, mask=bn_mask if train else None)
      x = jax.nn.elu(x)
      x = self.dropout(x, deterministic=not train, rngs=key)
    return self.out(x)


class LinearHead(nnx.Module):
  """A linear classifier [d, K] (PyTorch-style default init: uniform(+-1/sqrt(d)))."""

  def __init__(self, in_dim: int, num_classes: int, *, l2_normalize: bool = True,
               rngs: nnx.Rngs):
    self.l2_normalize = l2_normalize
    bound = 1.0 / (in_dim ** 0.5)

    def init(key, shape, dtype=jnp.float32):
      return jax.random.uniform(key, shape, dtype, -bound, bound)

    self.out = nnx.Linear(in_dim, num_classes, kernel_init=init, bias_init=init, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, mask: jax.Array | None = None,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Logits [B, K] of features ``x`` [B, d]; ``train``, ``mask``, ``dropout_key`` are unused."""
    del train, mask, dropout_key
    if self.l2_normalize:
      x = l2_normalize(x)
    return self.out(x)
