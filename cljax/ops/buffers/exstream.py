"""``exstream``: ExStream's per-class buffers of merged cluster centroids.

Hayes, Cahill and Kanan, "Memory Efficient Experience Replay for Streaming Learning", ICRA 2019
(reference code: tyler-hayes/ExStream). Each class k keeps at most c = capacity // num_classes
(>= 2) centroids, each with a weight (the number of stream examples it summarises):

* while class y holds fewer than c entries, the new example x is appended with weight 1;
* when it is full: among the class's *existing* entries (x excluded) the pair (i, j), i < j, with
  the smallest Euclidean distance is merged into the weight-averaged centroid
  ``(w_i C_i + w_j C_j) / (w_i + w_j)`` with weight ``w_i + w_j``, and x takes the freed slot with
  weight 1.

Slot convention (as in the reference code): the merged centroid goes to the HIGHER slot j and the
new example to the LOWER slot i. Ties between equally close pairs go to the lexicographically
smallest (i, j), which is what the reference's row-major ``argmin`` over the full distance matrix
picks. Within a class, slots are in order of first insertion, as the reference's class-filtered
view of its global buffer is, so slot indices mean the same thing in both.

State is a pytree of fixed shapes (``ExStreamState``); :func:`insert` is jit-friendly and ingests
a whole batch at once. Examples of different classes are processed in parallel, examples of the same
class one after another in stream order, so the result equals one-at-a-time insertion exactly (see
:func:`~cljax.ops.buffers._per_class.class_sequential_apply`). Items are 1-D [d], float.

Squared distances between a class's slots are cached in the state (``dists`` [K, c, c]): an insert
changes at most two slots, so only two rows/columns are recomputed, O(c d) per example instead of
the O(c^2 d) of recomputing all pairs. Cached entries are computed with the same formula
(sum of squared differences) a full recompute would use.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cljax.ops.buffers._base import Contents, Policy, Sample, clean_labels, sample_contents
from cljax.ops.buffers._per_class import (block_contents, class_sequential_apply, feature_spec,
                                          per_class_capacity)

NAME = "exstream"


class ExStreamState(NamedTuple):
  """Per-class ExStream buffers of ``K`` classes, capacity ``c`` per class, feature size ``d``.

  Attributes:
    centroids: [K, c, d] cluster centroids (the example's dtype if float, else float32); rows at
      slots >= counts[k] are zero.
    weights: [K, c] float32 number of stream examples each centroid summarises (0 on empty slots).
    counts: [K] int32 filled slots per class, in [0, c].
    dists: [K, c, c] float32 cached squared Euclidean distances between the slots of a class;
      only entries between filled slots are meaningful.
  """

  centroids: jax.Array
  weights: jax.Array
  counts: jax.Array
  dists: jax.Array


def init(key, capacity: int, example, num_classes: int) -> ExStreamState:
  """Empty buffers: K classes of c = capacity // num_classes (>= 2) slots [d]; ``key`` unused."""
  del key  # deterministic
  # A merge needs a pair of existing entries; the reference silently corrupts its buffer at c=1.
  c = per_class_capacity(NAME, capacity, num_classes, minimum=2)
  d, dtype = feature_spec(NAME, example, float_only=True)
  k = num_classes
  return ExStreamState(
      centroids=jnp.zeros((k, c, d), dtype),
      weights=jnp.zeros((k, c), jnp.float32),
      counts=jnp.zeros((k,), jnp.int32),
      dists=jnp.zeros((k, c, c), jnp.float32),
  )


def _sq_dists_to(cents: jax.Array, v: jax.Array) -> jax.Array:
  """Squared distances [c] of every row of ``cents`` [c, d] to ``v`` [d]."""
  diff = cents - v[None, :]
  return jnp.sum(diff * diff, axis=-1)


def closest_pair(dists: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Indices (i, j), i < j, of the closest pair in a full class's [c, c] distance matrix.

  Ties resolve to the lexicographically smallest (i, j) (first minimum in row-major order).
  """
  c = dists.shape[-1]
  upper = jnp.triu(jnp.ones((c, c), bool), k=1)
  flat = jnp.argmin(jnp.where(upper, dists, jnp.inf).reshape(-1))
  return flat // c, flat % c


def _insert_into_class(block, x):
  """One ExStream insert of ``x`` [d] into one class's (centroids [c,d], weights [c], count, dists).

  Written branch-free (both outcomes computed, one selected) so that it vmaps over classes.
  """
  cents, w, n, dists = block
  c = w.shape[0]
  full = n >= c
  i, j = closest_pair(dists)
  w_i, w_j = w[i], w[j]
  # The guard only matters before the class is full, where `merged` is computed but discarded.
  merged = (cents[i] * w_i + cents[j] * w_j) / jnp.where(full, w_i + w_j, 1.0)
  # Not full: x goes to slot n. Full: merged centroid to j, x to i (the reference's convention).
  slot_x = jnp.where(full, i, n)
  cents = jnp.where(full, cents.at[j].set(merged.astype(cents.dtype)), cents)
  w = jnp.where(full, w.at[j].set(w_i + w_j), w)
  cents = cents.at[slot_x].set(x.astype(cents.dtype))
  w = w.at[slot_x].set(1.0)
  row_x = _sq_dists_to(cents, cents[slot_x])
  dists = dists.at[slot_x, :].set(row_x).at[:, slot_x].set(row_x)
  row_j = _sq_dists_to(cents, cents[j])
  dists = jnp.where(full, dists.at[j, :].set(row_j).at[:, j].set(row_j), dists)
  return cents, w, jnp.minimum(n + 1, c), dists


def insert(state: ExStreamState, x: jax.Array, y: jax.Array, mask: jax.Array,
           max_width: int | None = None) -> ExStreamState:
  """Inserts a batch, exactly as inserting its rows one at a time in order.

  Args:
    state: the buffers (K classes, capacity c, d features).
    x: [B, d] float examples.
    y: [B] int labels in [0, K) (on unmasked rows).
    mask: [B] bool, rows to insert (e.g. ``valid & labeled``).
    max_width: see :func:`~cljax.ops.buffers._per_class.class_sequential_apply`.

  Returns:
    The updated buffers. Weights of class k sum to the number of class-k rows ever inserted.
  """
  y, mask = clean_labels(y, mask)
  return ExStreamState(*class_sequential_apply(tuple(state), _insert_into_class, x, y, mask,
                                               max_width))


def contents(state: ExStreamState) -> Contents:
  """K*c slots (slot k*c + i is centroid i of class k), weight = examples summarised."""
  c = state.weights.shape[1]
  filled = jnp.arange(c)[None, :] < state.counts[:, None]
  return block_contents(state.centroids, filled, state.weights)


def sample(state: ExStreamState, key: jax.Array, n: int, distinct: bool = False) -> Sample:
  """n centroids among the filled slots, with their weights (see the package docstring)."""
  return sample_contents(contents(state), key, n, distinct)


POLICY = Policy(NAME, init, insert, sample, contents)
