"""``reservoir``: a uniform sample of the whole stream (Vitter's Algorithm R), class-agnostic.

The n-th offered example (0-based) fills slot n while n < capacity; afterwards it replaces slot
j = ``randint(fold_in(key, n), (), 0, n + 1)`` if j < capacity. Every example offered so far is
then held with probability capacity / seen.

Vectorised over the batch: stream positions come from a cumulative sum of the mask and all draws
are independent of the buffer, so one scatter writes the batch. When two rows of a batch land on
the same slot, the later one wins, as sequential insertion would have it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.ops.buffers._base import (Policy, SlotState, clean_labels, count_offers, draw_key,
                                     init_slots, sample_slots, slot_contents, write)

NAME = "reservoir"


def init(key, capacity: int, example, num_classes: int) -> SlotState:
  """An empty reservoir of ``capacity`` items shaped like ``example``; ``key`` seeds its draws."""
  return init_slots(key, capacity, example, num_classes)


def insert(state: SlotState, x: jax.Array, y: jax.Array, mask: jax.Array) -> SlotState:
  """Algorithm R over the unmasked rows of x [B, ...], y [B], in order."""
  y, mask = clean_labels(y, mask)
  cap, b = state.y.shape[0], y.shape[0]
  n = state.seen + jnp.cumsum(mask, dtype=jnp.int32) - 1  # stream position of each row
  draw = jax.vmap(lambda i: jax.random.randint(draw_key(state.key, i), (), 0, i + 1))(n)
  slot = jnp.where(n < cap, n, draw)
  put = mask & (slot < cap)
  # A later row of the same batch that lands on the same slot wins; drop the earlier writes so the
  # scatter indices are unique (duplicate-index scatter order is unspecified in XLA).
  pos = jnp.arange(b)
  later = (slot[None, :] == slot[:, None]) & put[None, :] & (pos[None, :] > pos[:, None])
  state = write(state, slot, x, y, put & ~jnp.any(later, axis=1))
  state = count_offers(state, y, mask)
  return state._replace(count=jnp.minimum(state.seen, cap))


POLICY = Policy(NAME, init, insert, sample_slots, slot_contents)
