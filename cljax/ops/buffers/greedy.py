"""``greedy``: GDumb's greedy class-balancing sampler (Prabhu, Torr and Dokania, ECCV 2020).

The rule, for each offered example (x, y) of a buffer of capacity k, with ``|Y|`` the classes that
hold at least one slot *before* the example:

* admit it when its class is new to the buffer (holds no slot) or holds fewer than
  ``k // max(|Y|, 1)`` slots (the fair share); otherwise drop it, even when a slot is free;
* an admitted example is appended while the buffer is not full; when it is full, a uniformly
  random item of a largest class is evicted first (the lowest class id among tied largest
  classes) and the example takes its slot.

This is the paper's sampler (Sec. 3: "k_c < k / |Y_t|", evicting from the class with the most
samples) as the online-continual-learning survey code writes it
(RaptorMai/online-continual-learning ``agents/gdumb.py`` lines 19-32,
``greedy_balancing_update``: ``k_c = mem_size // max(1, len(mem_img))``, admit ``if y not in
mem_img or mem_c[y] < k_c``, evict ``random.randrange`` of ``max(mem_c)``). The paper's own code
(drimpossible/GDumb ``src/dataloader.py`` lines 74-78) fills the memory offline with the first
``k // |Y|`` samples of every class, which this rule reaches online once every class has arrived.
One difference in ties: the survey code evicts from the first-inserted largest class (dict
order), this policy from the lowest class id.

Draw for the n-th offered example: the victim is the r-th slot (slot order) of the largest class,
r = ``randint(fold_in(key, n), (), 0, class_count[largest])``. Sequential (``lax.scan``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.ops.buffers._base import (Policy, SlotState, clean_labels, count_offers, draw_key,
                                     init_slots, random_slot_of_class, sample_slots,
                                     slot_contents, write)

NAME = "greedy"


def init(key, capacity: int, example, num_classes: int) -> SlotState:
  """An empty buffer of ``capacity`` items shaped like ``example``; ``key`` seeds its draws."""
  return init_slots(key, capacity, example, num_classes)


def fair_share(class_count: jax.Array, capacity: int) -> jax.Array:
  """[] int32 ``capacity // max(classes holding a slot, 1)`` of ``class_count`` [K]."""
  present = jnp.sum(class_count > 0, dtype=jnp.int32)
  return capacity // jnp.maximum(present, 1)


def insert(state: SlotState, x: jax.Array, y: jax.Array, mask: jax.Array) -> SlotState:
  """Offers the unmasked rows of x [B, ...], y [B] in order under the rule above."""
  cap = state.y.shape[0]
  y, mask = clean_labels(y, mask)

  def body(s, row):
    xi, yi, do = row
    key = draw_key(s.key, s.seen)
    cc = s.class_count
    admit = do & ((cc[yi] == 0) | (cc[yi] < fair_share(cc, cap)))
    s = count_offers(s, yi[None], do[None])
    full = s.count >= cap
    # Under cond, so the O(capacity) search for a victim is paid only when one is needed.
    slot = jax.lax.cond(admit & full,
                        lambda: random_slot_of_class(s, jnp.argmax(cc), key),
                        lambda: s.count)
    s = write(s, slot[None], xi[None], yi[None], admit[None])
    return s._replace(count=s.count + (admit & ~full).astype(jnp.int32)), None

  state, _ = jax.lax.scan(body, state, (x, y, mask))
  return state


POLICY = Policy(NAME, init, insert, sample_slots, slot_contents)
