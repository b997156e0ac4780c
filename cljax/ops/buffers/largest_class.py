"""``largest_class``: REMIND's buffer (Hayes et al., ECCV 2020), e.g. of uint8 PQ codes.

Append while there is room. Once full, the new item always enters: it replaces a uniformly random
item of the class holding the most items, chosen *before* the new item is counted. Ties between
several largest classes go to the lowest class id (the reference picks the first class in its
dict's insertion order, i.e. the first seen; any largest class satisfies the rule). The reference
appends first and then evicts, so it can evict the item it has just added when that item's class is
the largest; here the new item always stays.

Draw for the n-th offered example: the victim is the r-th slot (slot order) of the largest class,
r = ``randint(fold_in(key, n), (), 0, class_count[largest])``. Sequential (``lax.scan``); the
O(capacity) search for the victim sits under ``lax.cond``, so it is only paid once full.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.ops.buffers._base import (Policy, SlotState, init_slots, random_slot_of_class,
                                     sample_slots, sequential_insert, slot_contents)

NAME = "largest_class"


def init(key, capacity: int, example, num_classes: int) -> SlotState:
  """An empty buffer of ``capacity`` items shaped (and typed) like ``example``, e.g. uint8 codes
  [h, w, m]; ``key`` seeds its draws."""
  return init_slots(key, capacity, example, num_classes)


def _when_full(state: SlotState, y: jax.Array, key: jax.Array):
  del y  # the victim class does not depend on the new item's class
  return random_slot_of_class(state, jnp.argmax(state.class_count), key), True


def insert(state: SlotState, x: jax.Array, y: jax.Array, mask: jax.Array) -> SlotState:
  """Offers the unmasked rows of x [B, ...], y [B] in order under the rule above."""
  return sequential_insert(state, x, y, mask, _when_full)


POLICY = Policy(NAME, init, insert, sample_slots, slot_contents)
