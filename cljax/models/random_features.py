"""Random feature embeddings of raw inputs: RanDumb's random Fourier features and RanPAC's ReLU.

Neither network learns its embedding; both draw it once from the init key and keep it fixed:

* ``random_fourier`` (RanDumb, Prabhu et al. 2024, drimpossible/RanDumb ``src/main.py``, which
  calls scikit-learn's ``RBFSampler(gamma="scale", n_components=embed_dim)``):
  ``φ(x) = √(2/D) · cos(x W + b)`` with ``W = √(2γ) · G``, G [d, D] standard normal, and
  b [D] ~ U(0, 2π); it approximates the RBF kernel exp(−γ‖x − x'‖²). scikit-learn's
  ``gamma="scale"`` is ``1 / (d · Var(X))`` over every entry of the training matrix X; the
  network stores γ as a fixed leaf ``gamma`` (default ``1 / d``, "scale" for unit-variance
  inputs) that a learner may set from data (``cljax/learners/randumb.py`` does). RanDumb's
  paper uses D up to 25,000.
* ``random_relu`` (RanPAC, McDonnell et al. 2023, as RanDumb's ``--embed_mode RanPAC``):
  ``φ(x) = max(0, x W)`` with W [d, D] standard normal.

Inputs [B, ...] are flattened to [B, d]. ``features(x)`` is φ(x) [B, D] float32; ``__call__``
adds a linear head [D, num_classes] (trainable), so the embedding also serves as the frozen
first layer of an ordinary classifier. The random matrices are ``Fixed`` variables read through
``stop_gradient``: a learner that trains the whole parameter tree leaves them as drawn (give an
optimizer without weight decay, or mask them, to keep decay off them as well).

Cost per row: 2·d·D FLOPs for the projection; memory 4·d·D bytes (78 MB at d = 784, D = 25,000).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class Fixed(nnx.Variable):
  """A variable that is part of the state (checkpointed, restored) but never trained."""


def _flat(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


class RandomFourier(nnx.Module):
  """Random Fourier features (scikit-learn ``RBFSampler``) + a linear head; see module docstring.

  Args:
    in_shape: example shape (flattened to d = prod(in_shape)).
    num_classes: outputs of the head.
    dim: D, the number of random features (RanDumb: up to 25,000).
    gamma: γ of the RBF kernel; None: 1/d (``gamma="scale"`` for inputs of unit variance).
  """

  def __init__(self, in_shape: Sequence[int], num_classes: int, dim: int = 25000,
               gamma: Optional[float] = None, *, rngs: nnx.Rngs):
    d = math.prod(in_shape)
    self.dim = int(dim)
    self.gaussian = Fixed(jax.random.normal(rngs.params(), (d, self.dim), jnp.float32))
    self.offset = Fixed(jax.random.uniform(rngs.params(), (self.dim,), jnp.float32, 0.0,
                                           2.0 * math.pi))
    self.gamma = Fixed(jnp.asarray(1.0 / d if gamma is None else gamma, jnp.float32))
    self.head = nnx.Linear(self.dim, num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """φ(x) = √(2/D) cos(x √(2γ) G + b): [B, ...] -> [B, D] float32."""
    g, b, gamma = (jax.lax.stop_gradient(v[...]) for v in (self.gaussian, self.offset,
                                                            self.gamma))
    proj = jnp.dot(_flat(x), g, precision=jax.lax.Precision.HIGHEST) * jnp.sqrt(2.0 * gamma)
    return jnp.sqrt(2.0 / self.dim) * jnp.cos(proj + b)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x))


class RandomReLU(nnx.Module):
  """RanPAC's random ReLU projection max(0, x W), W standard normal, + a linear head.

  Args: as ``RandomFourier`` (no γ).
  """

  def __init__(self, in_shape: Sequence[int], num_classes: int, dim: int = 25000, *,
               rngs: nnx.Rngs):
    d = math.prod(in_shape)
    self.dim = int(dim)
    self.gaussian = Fixed(jax.random.normal(rngs.params(), (d, self.dim), jnp.float32))
    self.head = nnx.Linear(self.dim, num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """φ(x) = max(0, x G): [B, ...] -> [B, D] float32."""
    g = jax.lax.stop_gradient(self.gaussian[...])
    return jax.nn.relu(jnp.dot(_flat(x), g, precision=jax.lax.Precision.HIGHEST))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x))
