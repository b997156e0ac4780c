"""Fixed-capacity example buffers on device: append, reservoir, class-balanced reservoir, sampling.

A buffer is a dict pytree with fixed shapes, so inserting never recompiles:

* ``x``           [capacity, ...] stored inputs (dtype of the example);
* ``y``           [capacity] int32 labels (-1 in empty slots);
* ``count``       [] int32, filled slots (slots [0, count) are valid);
* ``seen``        [] int32, examples offered so far (reservoir denominator);
* ``class_count`` [num_classes] int32, filled slots per class;
* ``class_seen``  [num_classes] int32, examples offered so far per class.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

POLICIES = ("reservoir", "class_balanced", "append")


def init(capacity: int, example_shape: Sequence[int], num_classes: int,
         dtype=jnp.float32) -> dict:
  """An empty buffer of ``capacity`` examples of shape ``example_shape``."""
  if capacity < 1:
    raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
  return {
      "x": jnp.zeros((capacity, *example_shape), dtype),
      "y": jnp.full((capacity,), -1, jnp.int32),
      "count": jnp.zeros((), jnp.int32),
      "seen": jnp.zeros((), jnp.int32),
      "class_count": jnp.zeros((num_classes,), jnp.int32),
      "class_seen": jnp.zeros((num_classes,), jnp.int32),
  }


def capacity(buf: dict) -> int:
  return buf["y"].shape[0]


def _write(buf: dict, slot: jax.Array, x: jax.Array, y: jax.Array, do: jax.Array) -> dict:
  """Writes (x, y) into ``slot`` when ``do``; keeps class counts consistent."""
  old_y = buf["y"][slot]
  slot = jnp.where(do, slot, capacity(buf))  # out of range -> dropped by mode="drop"
  cc = buf["class_count"]
  cc = cc.at[jnp.where(do & (old_y >= 0), old_y, cc.shape[0])].add(-1, mode="drop")
  cc = cc.at[jnp.where(do, y, cc.shape[0])].add(1, mode="drop")
  return {**buf,
          "x": buf["x"].at[slot].set(x.astype(buf["x"].dtype), mode="drop"),
          "y": buf["y"].at[slot].set(y, mode="drop"),
          "class_count": cc}


def _random_slot_of_class(buf: dict, cls: jax.Array, key: jax.Array) -> jax.Array:
  """A uniformly random filled slot holding class ``cls`` (any slot if none does)."""
  scores = jax.random.uniform(key, buf["y"].shape)
  return jnp.argmax(jnp.where(buf["y"] == cls, scores, -1.0))


def insert_one(buf: dict, x: jax.Array, y: jax.Array, key: jax.Array, do: jax.Array,
               policy: str = "reservoir") -> dict:
  """Offers one example to the buffer under ``policy`` (a no-op where ``do`` is False).

  * ``reservoir``: classic reservoir sampling; every example offered so far is held with equal
    probability capacity / seen.
  * ``class_balanced``: class-balanced reservoir (Chrysakis and Moens, 2020): while not full,
    append; when full, an example of a class that is not among the largest replaces a random item
    of a largest class; an example of a largest class replaces a random item of its own class with
    probability (its class's slots) / (its class's examples seen).
  * ``append``: append until full, then drop (a plain growing store).
  """
  cap = capacity(buf)
  k_res, k_slot = jax.random.split(key)
  seen = buf["seen"] + do.astype(jnp.int32)
  class_seen = buf["class_seen"].at[y].add(do.astype(jnp.int32))
  not_full = buf["count"] < cap
  if policy == "reservoir":
    j = jax.random.randint(k_res, (), 0, jnp.maximum(seen, 1))
    slot = jnp.where(not_full, buf["count"], j)
    write = do & (not_full | (j < cap))
  elif policy == "class_balanced":
    cc = buf["class_count"]
    largest = jnp.max(cc)
    is_largest = cc[y] >= largest
    big_cls = jnp.argmax(cc)
    u = jax.random.uniform(k_res)
    keep_own = u * class_seen[y].astype(jnp.float32) < cc[y].astype(jnp.float32)
    victim_cls = jnp.where(is_largest, y, big_cls)
    victim = _random_slot_of_class(buf, victim_cls, k_slot)
    slot = jnp.where(not_full, buf["count"], victim)
    write = do & (not_full | ~is_largest | keep_own)
  elif policy == "append":
    slot = buf["count"]
    write = do & not_full
  else:
    raise ValueError(f"unknown buffer policy {policy!r}; valid: {list(POLICIES)}")
  out = _write(buf, slot, x, y, write)
  return {**out, "seen": seen, "class_seen": class_seen,
          "count": jnp.minimum(buf["count"] + (do & not_full).astype(jnp.int32), cap)}


def insert(buf: dict, x: jax.Array, y: jax.Array, mask: jax.Array, key: jax.Array,
           policy: str = "reservoir") -> dict:
  """Offers a batch x [B, ...], y [B] in order; rows with mask [B] False are skipped."""
  keys = jax.random.split(key, y.shape[0])

  def body(b, row):
    xi, yi, mi, ki = row
    return insert_one(b, xi, yi, ki, mi, policy), None

  buf, _ = jax.lax.scan(body, buf, (x, y, mask, keys))
  return buf


def append(buf: dict, x: jax.Array, y: jax.Array, mask: jax.Array) -> dict:
  """Appends the rows of a batch where mask [B] is True, in order, in one scatter.

  Rows past the capacity are dropped (callers size the buffer so that this never happens).
  """
  m = mask.astype(jnp.int32)
  pos = buf["count"] + jnp.cumsum(m) - 1
  slot = jnp.where(mask, pos, capacity(buf))
  cc = buf["class_count"].at[jnp.where(mask & (pos < capacity(buf)), y, buf["class_count"].shape[0])]
  return {**buf,
          "x": buf["x"].at[slot].set(x.astype(buf["x"].dtype), mode="drop"),
          "y": buf["y"].at[slot].set(y, mode="drop"),
          "count": jnp.minimum(buf["count"] + jnp.sum(m), capacity(buf)),
          "seen": buf["seen"] + jnp.sum(m),
          "class_count": cc.add(1, mode="drop"),
          "class_seen": buf["class_seen"].at[jnp.where(mask, y, buf["class_seen"].shape[0])].add(
              1, mode="drop")}


def clear(buf: dict) -> dict:
  """Empties the buffer (keeps its arrays, so shapes are unchanged)."""
  return {**buf, "y": jnp.full_like(buf["y"], -1), "count": jnp.zeros_like(buf["count"]),
          "seen": jnp.zeros_like(buf["seen"]), "class_count": jnp.zeros_like(buf["class_count"]),
          "class_seen": jnp.zeros_like(buf["class_seen"])}


def sample_indices(key: jax.Array, count: jax.Array, n: int) -> jax.Array:
  """n [n] int32 indices drawn uniformly with replacement from [0, count) (0s when empty)."""
  return jax.random.randint(key, (n,), 0, jnp.maximum(count, 1))
