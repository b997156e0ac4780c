"""``ranked``: class-balanced memory that keeps each class's first-offered items (iCaRL's).

The memory of iCaRL (Rebuffi et al. 2017, Algorithms 4 and 5): ``capacity`` items split evenly
over the classes offered so far, m = capacity // (classes offered), and each class keeps its
*first* m items in the order they were offered. iCaRL offers a class's examples in herding order
(``cljax.ops.herding``), so the prefix is its exemplar set and "reduce exemplar set" is a
truncation; offered in stream order, the memory keeps each class's earliest examples.

Rule: an item's rank is its position among the offered items of its class (``class_seen`` before
it). After a batch, m is recomputed from the classes offered so far (it only shrinks); stored
items and the batch's rows are kept when their rank < m, and the kept ones are written in stream
order into the prefix [0, count). Since m only shrinks, the state after a stream is the same
whatever the batching: each class's first min(offered, m) items, in stream order. Deterministic
(``key`` is stored, unused).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cljax.ops import sharding

from cljax.ops.buffers._base import (Policy, clean_labels, count_offers, init_slots, raw_key,
                                     sample_slots, slot_contents)

NAME = "ranked"


class RankedState(NamedTuple):
  """A slot state (``_base.SlotState``'s fields; filled slots are the prefix [0, count)) plus
  ``rank`` [capacity] int32, each item's position among the offered items of its class (-1 on
  empty slots)."""

  x: jax.Array
  y: jax.Array
  count: jax.Array
  seen: jax.Array
  class_count: jax.Array
  class_seen: jax.Array
  key: jax.Array
  rank: jax.Array

  SHARDED_ROWS = ("x",)  # as SlotState: the items split over ``data``, the rest replicated


def init(key, capacity: int, example, num_classes: int) -> RankedState:
  """An empty memory of ``capacity`` items shaped like ``example``."""
  s = init_slots(raw_key(key), capacity, example, num_classes)
  return RankedState(*s, rank=jnp.full((capacity,), -1, jnp.int32))


def quota(class_seen: jax.Array, capacity: int) -> jax.Array:
  """[] int32 items per class: capacity // (classes offered so far), capacity before any."""
  return (capacity // jnp.maximum(jnp.sum(class_seen > 0), 1)).astype(jnp.int32)


def insert(state: RankedState, x: jax.Array, y: jax.Array, mask: jax.Array) -> RankedState:
  """Offers the unmasked rows of x [B, ...], y [B] in order under the rule above."""
  y, mask = clean_labels(y, mask)
  cap, k = state.y.shape[0], state.class_count.shape[0]
  # A row's rank: the items of its class offered before it (earlier calls, then earlier rows).
  onehot = jax.nn.one_hot(y, k, dtype=jnp.int32) * mask[:, None]
  before = jnp.cumsum(onehot, axis=0) - onehot
  rank = state.class_seen[y] + jnp.take_along_axis(before, y[:, None], axis=1)[:, 0]
  state = count_offers(state, y, mask)
  m = quota(state.class_seen, cap)
  filled = jnp.arange(cap) < state.count
  keep = jnp.concatenate([filled & (state.rank < m), mask & (rank < m)])
  order = jnp.argsort(~keep, stable=True)[:cap]  # kept items first: old slots, then new rows
  kept = keep[order]
  cat = lambda a, b: jnp.concatenate([a, b.astype(a.dtype)])[order]  # noqa: E731
  ys = jnp.where(kept, cat(state.y, y), -1)
  return sharding.constrain(state._replace(
      x=sharding.permute_rows(state.x, x, order), y=ys,
      rank=jnp.where(kept, cat(state.rank, rank), -1),
      count=jnp.sum(kept, dtype=jnp.int32),
      class_count=jnp.zeros((k,), jnp.int32).at[jnp.where(kept, ys, k)].add(1, mode="drop")))


POLICY = Policy(NAME, init, insert, sample_slots, slot_contents)
