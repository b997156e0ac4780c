"""Shared pieces of the buffer policies: the records, the slot state, writes, sampling.

Private to ``cljax.ops.buffers``: each idea (a consistent write, a stream-position draw, Floyd
sampling, a random slot of a class) is implemented once here and used by the policy files.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from cljax.ops import sharding


class Sample(NamedTuple):
  """``n`` items drawn from a buffer.

  Attributes:
    x: [n, ...] items (the buffer's item shape and dtype).
    y: [n] int32 labels (0 on every row when the buffer is empty, so losses index safely).
    weight: [n] float32 item weights (1 for plain items, the number of merged examples for
      centroids); 0 on every row when the buffer is empty, so an empty buffer adds nothing to a
      loss.
  """

  x: jax.Array
  y: jax.Array
  weight: jax.Array


class Contents(NamedTuple):
  """Every slot of a buffer.

  Attributes:
    x: [capacity, ...] items; unfilled slots hold stale or zero data.
    y: [capacity] int32 labels, -1 on unfilled slots.
    weight: [capacity] float32 item weights, 0 on unfilled slots.
    mask: [capacity] bool, True on filled slots.
  """

  x: jax.Array
  y: jax.Array
  weight: jax.Array
  mask: jax.Array


class Policy(NamedTuple):
  """A buffer policy: a record of pure functions over a NamedTuple state of arrays.

  Attributes:
    name: the registry name.
    init: ``(key, capacity, example, num_classes) -> state``; ``capacity`` is the total number of
      items, ``example`` one item without batch axis (array or ``.shape``/``.dtype``).
    insert: ``(state, x [B, ...], y [B] int, mask [B] bool) -> state``; rows offered in order,
      rows with mask False skipped. Jittable, fixed shapes.
    sample: ``(state, key, n, distinct=False) -> Sample``; ``n`` and ``distinct`` are static.
    contents: ``(state) -> Contents``.
  """

  name: str
  init: Callable[..., Any]
  insert: Callable[..., Any]
  sample: Callable[..., Sample]
  contents: Callable[[Any], Contents]


# Keys and examples ---------------------------------------------------------------------------


def raw_key(key) -> jax.Array:
  """Raw uint32 key data of ``key`` (a typed key or raw data already).

  States hold raw data rather than a typed key so they convert to numpy and checkpoint plainly.
  """
  if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  return jnp.asarray(key, jnp.uint32)


def draw_key(raw: jax.Array, n: jax.Array) -> jax.Array:
  """The key of the n-th offered example (0-based): ``fold_in(key, n)``.

  Deriving every draw from the stream position, never from a carried key, is what makes the result
  independent of how the stream is cut into batches.
  """
  return jax.random.fold_in(jax.random.wrap_key_data(raw), n)


def example_spec(example) -> tuple[tuple[int, ...], Any]:
  """(shape, dtype) of one item: an array or anything with ``.shape`` and ``.dtype``."""
  if not (hasattr(example, "shape") and hasattr(example, "dtype")):
    example = jnp.asarray(example)
  return tuple(example.shape), jnp.dtype(example.dtype)


def check_sizes(capacity: int, num_classes: int) -> None:
  if int(num_classes) < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  if int(capacity) < 1:
    raise ValueError(f"buffer capacity must be >= 1, got {capacity}")


# The slot state ------------------------------------------------------------------------------


class SlotState(NamedTuple):
  """A buffer of ``capacity`` slots whose filled slots are the prefix [0, count).

  Attributes:
    x: [capacity, ...] stored items (the example's shape and dtype); slots >= count hold stale
      or zero data.
    y: [capacity] int32 labels, -1 on empty slots.
    count: [] int32 filled slots.
    seen: [] int32 examples offered so far (unmasked rows), i.e. the next stream position.
    class_count: [num_classes] int32 filled slots per class.
    class_seen: [num_classes] int32 examples offered so far per class.
    key: raw PRNG key data (uint32, ``jax.random.key_data``) the draws are folded from; never
      advanced.
  """

  x: jax.Array
  y: jax.Array
  count: jax.Array
  seen: jax.Array
  class_count: jax.Array
  class_seen: jax.Array
  key: jax.Array

  # The item array: split over the mesh's ``data`` axis by ``cljax.ops.sharding.state_specs``;
  # the labels and counters stay replicated, so every decision is taken once for all shards.
  SHARDED_ROWS = ("x",)


def init_slots(key, capacity: int, example, num_classes: int) -> SlotState:
  """An empty :class:`SlotState` of ``capacity`` items shaped like ``example``."""
  check_sizes(capacity, num_classes)
  shape, dtype = example_spec(example)
  return SlotState(
      x=jnp.zeros((capacity, *shape), dtype),
      y=jnp.full((capacity,), -1, jnp.int32),
      count=jnp.zeros((), jnp.int32),
      seen=jnp.zeros((), jnp.int32),
      class_count=jnp.zeros((num_classes,), jnp.int32),
      class_seen=jnp.zeros((num_classes,), jnp.int32),
      key=raw_key(key))


def clean_labels(y: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(y [B] int32 with masked rows set to class 0, mask [B] bool).

  Masked rows may carry any label; 0 keeps every index computed from them in range.
  """
  # Whole on every device under a mesh: every decision taken from them is computed replicated.
  y, mask = sharding.replicate((jnp.asarray(y, jnp.int32), jnp.asarray(mask, bool)))
  return jnp.where(mask, y, 0), mask


def count_offers(state, y: jax.Array, mask: jax.Array):
  """``seen`` and ``class_seen`` advanced by the unmasked rows of y [B]."""
  k = state.class_seen.shape[0]
  return state._replace(
      seen=state.seen + jnp.sum(mask, dtype=jnp.int32),
      class_seen=state.class_seen.at[jnp.where(mask, y, k)].add(1, mode="drop"))


def write(state, slot: jax.Array, x: jax.Array, y: jax.Array, do: jax.Array):
  """Writes rows x [B, ...], y [B] into ``slot`` [B] where ``do`` [B]; keeps class_count right.

  Slots must be distinct among the rows written (XLA leaves the order of duplicate scatter
  indices unspecified). ``count`` is the caller's business.
  """
  cap, k = state.y.shape[0], state.class_count.shape[0]
  old = state.y[jnp.clip(slot, 0, cap - 1)]
  dst = jnp.where(do, slot, cap)  # out of range: dropped by mode="drop"
  cc = state.class_count.at[jnp.where(do & (old >= 0), old, k)].add(-1, mode="drop")
  cc = cc.at[jnp.where(do, y, k)].add(1, mode="drop")
  return state._replace(x=sharding.scatter_rows(state.x, dst, x),
                        y=state.y.at[dst].set(y, mode="drop"), class_count=cc)


def random_slot_of_class(state, cls: jax.Array, key: jax.Array) -> jax.Array:
  """A uniformly random filled slot holding class ``cls``: the r-th such slot in slot order,
  r = ``randint(key, (), 0, class_count[cls])``. O(capacity); slot 0 if the class holds none."""
  r = jax.random.randint(key, (), 0, jnp.maximum(state.class_count[cls], 1))
  running = jnp.cumsum((state.y == cls).astype(jnp.int32))
  return jnp.argmax(running > r).astype(jnp.int32)


def sequential_insert(state, x: jax.Array, y: jax.Array, mask: jax.Array,
                      when_full: Callable[[Any, jax.Array, jax.Array], tuple]):
  """Offers rows one at a time (``lax.scan``): append while not full, else ``when_full`` decides.

  For a policy whose rule depends on the buffer as updated by the previous row.

  Args:
    state: a slot state (:class:`SlotState` fields).
    x: [B, ...] items; y: [B] int labels; mask: [B] bool, rows to offer.
    when_full: ``(state, y_row, key) -> (slot [] int32, write [] bool)`` for a full buffer, where
      ``state.seen``/``class_seen`` already count the row and ``key`` is ``draw_key(key, n)`` of
      the row's stream position n. Run under ``lax.cond``, so its O(capacity) searches are paid
      only once the buffer is full.

  Returns:
    The state after every unmasked row was offered.
  """
  cap = state.y.shape[0]
  y, mask = clean_labels(y, mask)

  def body(s, row):
    xi, yi, do = row
    key = draw_key(s.key, s.seen)
    s = count_offers(s, yi[None], do[None])
    full = s.count >= cap
    def evict():
      slot, put = when_full(s, yi, key)
      return jnp.asarray(slot, jnp.int32), jnp.asarray(put, bool)

    slot, put = jax.lax.cond(full, evict, lambda: (s.count, jnp.ones((), bool)))
    s = write(s, slot[None], xi[None], yi[None], (do & put)[None])
    return s._replace(count=s.count + (do & ~full).astype(jnp.int32)), None

  state, _ = jax.lax.scan(body, state, (x, y, mask))
  return state


def slot_contents(state) -> Contents:
  """Contents of a slot state: every slot, filled ones the prefix [0, count), weight 1."""
  filled = jnp.arange(state.y.shape[0]) < state.count
  return Contents(state.x, jnp.where(filled, state.y, -1), filled.astype(jnp.float32), filled)


# Sampling ------------------------------------------------------------------------------------


def prefix_indices(key: jax.Array, count: jax.Array, n: int, distinct: bool = False) -> jax.Array:
  """n [n] int32 indices into [0, count) (all 0 when count == 0).

  ``distinct`` False: uniform with replacement. ``distinct`` True: when count >= n a uniformly
  random ordered n-subset (Floyd's algorithm, O(n^2) work independent of the capacity, then a
  random order); when 0 < count < n, every index once in random order in the first ``count`` rows
  and the other rows uniform with replacement.
  """
  if not distinct:
    idx = jax.random.randint(key, (n,), 0, jnp.maximum(count, 1))
    return jnp.where(count > 0, idx, 0).astype(jnp.int32)
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
  first = pos < m
  sel = jnp.where(first, sel, extra)
  # Random order within the distinct rows (Floyd's order is not uniform); they stay in front.
  sel = sel[jnp.argsort(jnp.where(first, order_keys, order_keys + (1 << 30)))]
  return jnp.where(count > 0, sel, 0).astype(jnp.int32)


def _gather(c: Contents, idx: jax.Array, nonempty: jax.Array, rows=lambda x, i: x[i]) -> Sample:
  return Sample(rows(c.x, idx), jnp.where(nonempty, c.y[idx], 0),
                jnp.where(nonempty, c.weight[idx], 0.0).astype(jnp.float32))


def sample_slots(state, key: jax.Array, n: int, distinct: bool = False) -> Sample:
  """n items of a slot state (filled slots are the prefix); see :func:`prefix_indices`."""
  idx = prefix_indices(key, state.count, n, distinct)
  return _gather(slot_contents(state), idx, state.count > 0, sharding.take_rows)


def sample_contents(contents: Contents, key: jax.Array, n: int, distinct: bool = False) -> Sample:
  """n items among the slots where ``contents.mask``, for layouts whose filled slots are not a
  prefix (per-class blocks): the filled slots are ordered first, then sampled as a prefix."""
  count = jnp.sum(contents.mask, dtype=jnp.int32)
  order = jnp.argsort(~contents.mask, stable=True)
  idx = order[prefix_indices(key, count, n, distinct)]
  return _gather(contents, idx, count > 0)
