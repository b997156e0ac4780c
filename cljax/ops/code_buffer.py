"""A fixed-capacity, class-balanced replay buffer of codes (REMIND's buffer), as a pytree.

The buffer lives on device with shapes fixed at creation, so a stream that fills it never triggers
a recompile. Filled slots are always the prefix [0, count): items are appended while there is room
and replaced in place once full.

Eviction rule (REMIND, ALGORITHMS.md §2): when full, a uniformly random item of the class holding
the most items is removed and the new item takes its slot. Ties between several largest classes go
to the lowest class id (the reference picks the first class in its dict's insertion order, i.e. the
first seen; any largest class satisfies the rule). The class to evict from is chosen *before* the
new item is counted. The reference appends first and then evicts, so it can evict the item it has
just added when that item's class is the largest; here the new item always stays.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class CodeBuffer(NamedTuple):
  """Buffer state. All arrays; a pytree.

  Attributes:
    codes: [capacity, *item_shape] (uint8 for PQ codes; slots >= count hold stale or zero data).
    labels: [capacity] int32 class of each slot, -1 where empty.
    count: [] int32 number of filled slots (the prefix [0, count)).
    class_counts: [num_classes] int32 items of each class in the buffer.
  """

  codes: jax.Array
  labels: jax.Array
  count: jax.Array
  class_counts: jax.Array

  @property
  def capacity(self) -> int:
    return self.labels.shape[0]


def create(capacity: int, item_shape: tuple, num_classes: int, dtype=jnp.uint8) -> CodeBuffer:
  """An empty buffer of ``capacity`` items of shape ``item_shape`` and ``num_classes`` classes."""
  if capacity < 1:
    raise ValueError(f"capacity must be >= 1, got {capacity}")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  return CodeBuffer(
      codes=jnp.zeros((capacity, *item_shape), dtype),
      labels=jnp.full((capacity,), -1, jnp.int32),
      count=jnp.zeros((), jnp.int32),
      class_counts=jnp.zeros((num_classes,), jnp.int32))


def _eviction_slot(buf: CodeBuffer, key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(slot, class) of a uniformly random item of the (lowest-id) largest class. O(capacity)."""
  cls = jnp.argmax(buf.class_counts).astype(jnp.int32)
  k = jax.random.randint(key, (), 0, jnp.maximum(buf.class_counts[cls], 1))
  # The k-th (0-based) slot holding class `cls`: first position where the running count exceeds k.
  running = jnp.cumsum((buf.labels == cls).astype(jnp.int32))
  return jnp.argmax(running > k).astype(jnp.int32), cls


def insert(buf: CodeBuffer, codes: jax.Array, label: jax.Array, key: jax.Array,
           do_insert: jax.Array | bool = True) -> CodeBuffer:
  """Adds one item. codes [*item_shape], label [] int in [0, num_classes), key a PRNG key.

  Appends while count < capacity; otherwise replaces a random item of the largest class (see
  module docstring). ``do_insert`` False returns the buffer unchanged (for masked batch rows).
  """
  label = jnp.asarray(label, jnp.int32)
  full = buf.count >= buf.capacity

  def append(_):
    return buf.count, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)

  def evict(_):
    slot, cls = _eviction_slot(buf, key)
    return slot, cls, jnp.ones((), jnp.int32)

  # cond, not select: the O(capacity) eviction search is only paid once the buffer is full.
  slot, cls, evicted = jax.lax.cond(full, evict, append, None)
  do = jnp.asarray(do_insert, bool)
  step = do.astype(jnp.int32)
  # A skipped row rewrites the slot's old contents: O(item) work, never a copy of the buffer.
  item = jnp.where(do, codes.astype(buf.codes.dtype), buf.codes[slot])
  return CodeBuffer(
      codes=buf.codes.at[slot].set(item),
      labels=buf.labels.at[slot].set(jnp.where(do, label, buf.labels[slot])),
      count=jnp.minimum(buf.count + step, buf.capacity).astype(jnp.int32),
      class_counts=buf.class_counts.at[cls].add(-evicted * step).at[label].add(step))


def insert_batch(buf: CodeBuffer, codes: jax.Array, labels: jax.Array, key: jax.Array,
                 mask: jax.Array | None = None) -> CodeBuffer:
  """Inserts rows in order (lax.scan of ``insert``). codes [B, *item_shape], labels [B], mask [B]."""
  b = labels.shape[0]
  if mask is None:
    mask = jnp.ones((b,), bool)
  keys = jax.random.split(key, b)

  def body(carry, row):
    c, y, k, m = row
    return insert(carry, c, y, k, m), None

  buf, _ = jax.lax.scan(body, buf, (codes, labels.astype(jnp.int32), keys, mask))
  return buf


def sample(buf: CodeBuffer, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
  """Draws n slot indices among the filled slots, fixed output shape.

  Returns:
    idx: [n] int32 slot indices in [0, count) (all 0 when the buffer is empty).
    distinct: [n] bool, True on rows drawn without replacement.

  When count >= n, the n indices are distinct and a uniformly random ordered n-subset of the filled
  slots (Floyd's algorithm, O(n^2) work independent of capacity, then a random order). When
  0 < count < n, the first ``count`` rows hold every filled slot once in random order and the other
  rows are drawn uniformly with replacement (``distinct`` False there); callers choose whether to
  use or mask them. When count == 0, all rows are index 0 and ``distinct`` is all False.
  """
  count = buf.count
  m = jnp.minimum(count, n)
  pos = jnp.arange(n, dtype=jnp.int32)
  # Floyd: for j = count - m, ..., count - 1, draw t in [0, j]; take t unless already taken, else j.
  hi = count - m + pos
  # All draws in one call (each random call adds a threefry instance to compile): Floyd's draws,
  # with-replacement fill-ins, and sort keys for a random order.
  maxval = jnp.stack([jnp.maximum(hi + 1, 1), jnp.full((n,), jnp.maximum(count, 1)),
                      jnp.full((n,), 1 << 30)])
  draws, extra, order_keys = jax.random.randint(key, (3, n), 0, maxval)

  def body(i, sel):
    taken = jnp.any((sel == draws[i]) & (pos < i))
    return sel.at[i].set(jnp.where(taken, hi[i], draws[i]))

  sel = jax.lax.fori_loop(0, n, body, jnp.zeros((n,), jnp.int32))
  distinct = pos < m
  sel = jnp.where(distinct, sel, extra)
  # Random order within the distinct rows (Floyd's order is not uniform); they stay in front.
  order = jnp.argsort(jnp.where(distinct, order_keys, order_keys + (1 << 30)))
  sel = sel[order]
  return jnp.where(count > 0, sel, 0).astype(jnp.int32), distinct


def gather(buf: CodeBuffer, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(codes [n, *item_shape], labels [n]) of slots idx [n]."""
  return buf.codes[idx], buf.labels[idx]
