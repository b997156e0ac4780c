"""``queue``: per-class FIFO of the last c items (c = capacity // num_classes).

Each class has a ring of c slots: its i-th example (0-based, per class) goes to ring slot i mod c,
so the ring always holds the class's last c examples. Deterministic; vectorised over the batch
(rows are ranked within their class, and only the last c rows of a class in a batch are written,
so their ring slots are distinct). Items are 1-D [d].
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cljax.ops.buffers._base import Contents, Policy, Sample, clean_labels, sample_contents
from cljax.ops.buffers._per_class import block_contents, feature_spec, per_class_capacity

NAME = "queue"


class QueueState(NamedTuple):
  """Per-class rings.

  Attributes:
    x: [K, c, d] the last c examples of each class (ring order: slot = arrival index mod c).
    class_seen: [K] int32 examples of each class offered so far.
  """

  x: jax.Array
  class_seen: jax.Array


def init(key, capacity: int, example, num_classes: int) -> QueueState:
  """Empty rings of c = capacity // num_classes items [d] (``example`` [d]); ``key`` unused."""
  del key  # deterministic
  c = per_class_capacity(NAME, capacity, num_classes)
  d, dtype = feature_spec(NAME, example)
  return QueueState(jnp.zeros((num_classes, c, d), dtype), jnp.zeros((num_classes,), jnp.int32))


def insert(state: QueueState, x: jax.Array, y: jax.Array, mask: jax.Array) -> QueueState:
  """Appends the unmasked rows of x [B, d], y [B] to their class's ring, in order."""
  y, mask = clean_labels(y, mask)
  k, c, d = state.x.shape
  pos = jnp.arange(y.shape[0])
  same = (y[None, :] == y[:, None]) & mask[None, :]
  rank = jnp.sum(same & (pos[None, :] < pos[:, None]), axis=1)  # earlier rows of the same class
  total = jnp.sum(same, axis=1)
  # Only the last c rows of a class in this batch survive; their ring slots are then distinct.
  put = mask & (rank >= total - c)
  slot = (state.class_seen[y] + rank) % c
  flat = jnp.where(put, y * c + slot, k * c)
  xs = state.x.reshape(k * c, d).at[flat].set(x.astype(state.x.dtype), mode="drop")
  seen = state.class_seen.at[jnp.where(mask, y, k)].add(1, mode="drop")
  return QueueState(xs.reshape(k, c, d), seen)


def contents(state: QueueState) -> Contents:
  """K*c slots (slot k*c + i is ring slot i of class k), weight 1 where filled."""
  c = state.x.shape[1]
  filled = jnp.arange(c)[None, :] < state.class_seen[:, None]
  return block_contents(state.x, filled, filled.astype(jnp.float32))


def sample(state: QueueState, key: jax.Array, n: int, distinct: bool = False) -> Sample:
  """n items among the filled slots (see the package docstring)."""
  return sample_contents(contents(state), key, n, distinct)


POLICY = Policy(NAME, init, insert, sample, contents)
