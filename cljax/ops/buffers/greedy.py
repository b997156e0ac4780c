"""``greedy``: GDumb's greedy class-balanced sampler (Prabhu, Torr and Dokania, ECCV 2020).

Not full: append. Full: if the example's class holds fewer slots than the largest class, it
replaces a uniformly random item of a largest class (the lowest class id on ties); otherwise it is
dropped. Unlike ``class_balanced`` there is no probabilistic replacement within a class: a class
at the top keeps its first items.

Draw for the n-th offered example: the victim is the r-th slot (slot order) of the largest class,
r = ``randint(fold_in(key, n), (), 0, class_count[largest])``. Sequential (``lax.scan``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.ops.buffers._base import (Policy, SlotState, init_slots, random_slot_of_class,
                                     sample_slots, sequential_insert, slot_contents)

NAME = "greedy"


def init(key, capacity: int, example, num_classes: int) -> SlotState:
  """An empty buffer of ``capacity`` items shaped like ``example``; ``key`` seeds its draws."""
  return init_slots(key, capacity, example, num_classes)


def _when_full(state: SlotState, y: jax.Array, key: jax.Array):
  cc = state.class_count
  big = jnp.argmax(cc)
  return random_slot_of_class(state, big, key), cc[y] < cc[big]


def insert(state: SlotState, x: jax.Array, y: jax.Array, mask: jax.Array) -> SlotState:
  """Offers the unmasked rows of x [B, ...], y [B] in order under the rule above."""
  return sequential_insert(state, x, y, mask, _when_full)


POLICY = Policy(NAME, init, insert, sample_slots, slot_contents)
