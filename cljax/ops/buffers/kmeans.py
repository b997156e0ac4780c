"""``kmeans``: per-class online k-means with c = capacity // num_classes centroids per class.

The first c examples of a class seed its centroids; afterwards the nearest centroid j (squared
Euclidean, first index on ties) absorbs x as a running mean, ``w_j += 1; C_j += (x - C_j) / w_j``.
A centroid's weight is the number of examples it has absorbed, so a class's weights sum to its
examples seen. Deterministic; sequential within a class, parallel across classes
(:func:`~cljax.ops.buffers._per_class.class_sequential_apply`). Items are 1-D [d], float.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cljax.ops.buffers._base import Contents, Policy, Sample, clean_labels, sample_contents
from cljax.ops.buffers._per_class import (block_contents, class_sequential_apply, feature_spec,
                                          per_class_capacity)

NAME = "kmeans"


class KMeansState(NamedTuple):
  """Per-class online k-means.

  Attributes:
    centroids: [K, c, d] centroids (the example's dtype if float, else float32).
    weights: [K, c] float32 examples absorbed by each centroid (0 on unseeded slots).
    counts: [K] int32 seeded centroids per class, in [0, c].
  """

  centroids: jax.Array
  weights: jax.Array
  counts: jax.Array


def init(key, capacity: int, example, num_classes: int) -> KMeansState:
  """No centroids yet: K classes of c = capacity // num_classes slots [d]; ``key`` unused."""
  del key  # deterministic
  c = per_class_capacity(NAME, capacity, num_classes)
  d, dtype = feature_spec(NAME, example, float_only=True)
  k = num_classes
  return KMeansState(jnp.zeros((k, c, d), dtype), jnp.zeros((k, c), jnp.float32),
                     jnp.zeros((k,), jnp.int32))


def _step(block, x):
  """One example x [d] into one class's (centroids [c, d], weights [c], count [])."""
  cents, w, n = block
  c = w.shape[0]
  full = n >= c
  diff = cents - x[None, :]
  nearest = jnp.argmin(jnp.sum(diff * diff, axis=-1))
  slot = jnp.where(full, nearest, n)
  w_new = jnp.where(full, w[slot] + 1.0, 1.0)
  # Running mean; on seeding (w_new = 1) this is exactly x.
  c_new = jnp.where(full, cents[slot] + (x - cents[slot]) / w_new, x)
  return cents.at[slot].set(c_new.astype(cents.dtype)), w.at[slot].set(w_new), jnp.minimum(n + 1, c)


def insert(state: KMeansState, x: jax.Array, y: jax.Array, mask: jax.Array,
           max_width: int | None = None) -> KMeansState:
  """Offers the unmasked rows of x [B, d], y [B] in order; ``max_width``: see
  :func:`~cljax.ops.buffers._per_class.class_sequential_apply`."""
  y, mask = clean_labels(y, mask)
  return KMeansState(*class_sequential_apply(tuple(state), _step, x.astype(state.centroids.dtype),
                                             y, mask, max_width))


def contents(state: KMeansState) -> Contents:
  """K*c slots (slot k*c + i is centroid i of class k), weight = examples absorbed."""
  c = state.weights.shape[1]
  filled = jnp.arange(c)[None, :] < state.counts[:, None]
  return block_contents(state.centroids, filled, state.weights)


def sample(state: KMeansState, key: jax.Array, n: int, distinct: bool = False) -> Sample:
  """n centroids among the seeded slots, with their weights (see the package docstring)."""
  return sample_contents(contents(state), key, n, distinct)


POLICY = Policy(NAME, init, insert, sample, contents)
