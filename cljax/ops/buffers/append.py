"""``append``: append until full, then drop.

A plain store: a time step's data, or "keep everything" when sized to the whole stream. Rows are
written in stream order into the prefix [0, count); once full, further rows are dropped (how many:
``seen - count``). Deterministic; one scatter per batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.ops.buffers._base import (Policy, SlotState, clean_labels, count_offers, init_slots,
                                     sample_slots, slot_contents, write)

NAME = "append"


def init(key, capacity: int, example, num_classes: int) -> SlotState:
  """An empty store of ``capacity`` items shaped like ``example``; ``key`` is kept, unused."""
  return init_slots(key, capacity, example, num_classes)


def insert(state: SlotState, x: jax.Array, y: jax.Array, mask: jax.Array) -> SlotState:
  """Appends the unmasked rows of x [B, ...], y [B] in order; rows past the capacity are dropped."""
  y, mask = clean_labels(y, mask)
  cap = state.y.shape[0]
  slot = state.count + jnp.cumsum(mask, dtype=jnp.int32) - 1
  state = write(state, slot, x, y, mask & (slot < cap))
  state = count_offers(state, y, mask)
  return state._replace(count=jnp.minimum(state.count + jnp.sum(mask, dtype=jnp.int32), cap))


def clear(state: SlotState) -> SlotState:
  """Empties the store (counters and labels reset; shapes, stale ``x`` and ``key`` kept)."""
  return state._replace(y=jnp.full_like(state.y, -1), count=jnp.zeros_like(state.count),
                        seen=jnp.zeros_like(state.seen),
                        class_count=jnp.zeros_like(state.class_count),
                        class_seen=jnp.zeros_like(state.class_seen))


POLICY = Policy(NAME, init, insert, sample_slots, slot_contents)
