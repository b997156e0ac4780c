"""``class_balanced``: class-balanced reservoir (Chrysakis and Moens, ICML 2020).

While the buffer is not full, every example is appended. Once full, an example of class y
(counted in ``class_seen`` first):

* if y is not among the largest classes, it replaces a uniformly random item of a largest class
  (the lowest class id on ties);
* if y is a largest class, it replaces a uniformly random item of its own class with probability
  class_count[y] / class_seen[y], else it is dropped.

Draws for the n-th offered example: ``k_u, k_slot = split(fold_in(key, n))``; the coin is
``uniform(k_u) * class_seen[y] < class_count[y]`` and the victim is the r-th slot (slot order) of
its class, r = ``randint(k_slot, (), 0, class_count[victim class])``. Sequential (``lax.scan``):
each decision depends on the counts the previous row left.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.ops.buffers._base import (Policy, SlotState, init_slots, random_slot_of_class,
                                     sample_slots, sequential_insert, slot_contents)

NAME = "class_balanced"


def init(key, capacity: int, example, num_classes: int) -> SlotState:
  """An empty buffer of ``capacity`` items shaped like ``example``; ``key`` seeds its draws."""
  return init_slots(key, capacity, example, num_classes)


def _when_full(state: SlotState, y: jax.Array, key: jax.Array):
  k_u, k_slot = jax.random.split(key)
  cc = state.class_count
  is_largest = cc[y] >= jnp.max(cc)
  keep_own = (jax.random.uniform(k_u) * state.class_seen[y].astype(jnp.float32)
              < cc[y].astype(jnp.float32))
  victim_cls = jnp.where(is_largest, y, jnp.argmax(cc))
  return random_slot_of_class(state, victim_cls, k_slot), ~is_largest | keep_own


def insert(state: SlotState, x: jax.Array, y: jax.Array, mask: jax.Array) -> SlotState:
  """Offers the unmasked rows of x [B, ...], y [B] in order under the rule above."""
  return sequential_insert(state, x, y, mask, _when_full)


POLICY = Policy(NAME, init, insert, sample_slots, slot_contents)
