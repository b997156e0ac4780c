"""Fixed-capacity stream buffers under one interface: ExStream and the baselines its paper compares.

Every buffer of ``K`` classes and ``c`` items per class holds K*c items of ``d`` features (equal
memory in items across kinds) and is used through a :class:`StreamBuffer` record of pure functions::

    buf = stream_buffers.get("reservoir")
    state = buf.init(num_classes, capacity, dim, key)
    state = buf.insert(state, x, y, mask)          # x [B, d], y [B] int, mask [B] bool; jittable
    x, y, weight, mask = buf.contents(state)       # [K*c, d], [K*c] int32, [K*c] f32, [K*c] bool

Kinds:

* ``exstream``: per-class merge of the closest pair (:mod:`cljax.ops.exstream`); weight = examples
  summarised by each centroid.
* ``reservoir``: one buffer of K*c items, a uniform sample of the whole stream (Vitter's algorithm
  R): the n-th example (0-based) fills slot n while n < K*c, afterwards replaces slot j ~ U{0..n} if
  j < K*c. Class-agnostic. The draw for the n-th example uses ``fold_in(key, n)``, so the result
  does not depend on how the stream is cut into batches.
* ``queue``: per-class FIFO of the last c examples of each class.
* ``kmeans``: per-class online k-means with c centroids: the first c examples of a class seed the
  centroids; afterwards the nearest centroid j (squared Euclidean, first index on ties) absorbs x
  as a running mean, ``w_j += 1; C_j += (x - C_j) / w_j``.

Weights are 1 for reservoir and queue items. All inserts equal inserting the rows one at a time in
stream order; masked rows (``mask`` False) are skipped and do not count as seen.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from cljax.ops import exstream as _exstream
from cljax.ops.exstream import class_sequential_apply


class StreamBuffer(NamedTuple):
  """A buffer kind: ``init(K, c, d, key) -> state``, ``insert(state, x, y, mask) -> state``,
  ``contents(state) -> (x [K*c, d], y [K*c], weight [K*c], mask [K*c])``."""

  name: str
  init: Callable[..., Any]
  insert: Callable[..., Any]
  contents: Callable[[Any], tuple]


def _default_mask(y, mask):
  return jnp.ones(y.shape, bool) if mask is None else mask.astype(bool)


# ExStream -------------------------------------------------------------------------------------


def _exstream_init(num_classes, capacity, dim, key=None):
  del key  # deterministic
  return _exstream.init(num_classes, capacity, dim)


def _exstream_insert(state, x, y, mask=None):
  return _exstream.insert(state, x, y, _default_mask(y, mask))


EXSTREAM = StreamBuffer("exstream", _exstream_init, _exstream_insert, _exstream.contents)


# Reservoir ------------------------------------------------------------------------------------


class ReservoirState(NamedTuple):
  """Reservoir of M = K*c items.

  Attributes:
    x: [M, d] stored examples.
    y: [M] int32 their labels.
    seen: [] int32 examples offered so far (the stream position n).
    key: [2] uint32 raw PRNG key data the per-example draws are folded from; never advanced.
      Raw data rather than a typed key so the state converts to numpy and checkpoints plainly.
  """

  x: jax.Array
  y: jax.Array
  seen: jax.Array
  key: jax.Array


def reservoir_init(num_classes: int, capacity: int, dim: int, key=None) -> ReservoirState:
  """Empty reservoir of ``num_classes * capacity`` items; ``key`` seeds its draws."""
  if key is None:
    key = jax.random.key(0)
  if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  m = num_classes * capacity
  return ReservoirState(jnp.zeros((m, dim), jnp.float32), jnp.zeros((m,), jnp.int32),
                        jnp.zeros((), jnp.int32), key)


def reservoir_insert(state: ReservoirState, x, y, mask=None) -> ReservoirState:
  """Algorithm R over the active rows of the batch, in order."""
  mask = _default_mask(y, mask)
  m = state.y.shape[0]
  b = y.shape[0]
  # Stream position of each active row.
  n = state.seen + jnp.cumsum(mask.astype(jnp.int32)) - 1
  key = jax.random.wrap_key_data(state.key)
  draw = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(key, i), (), 0, i + 1))(n)
  slot = jnp.where(n < m, n, draw)
  write = mask & (slot < m)
  # A later row of the same batch that lands on the same slot wins; drop the earlier writes so the
  # scatter indices are unique (duplicate-index scatter order is unspecified in XLA).
  pos = jnp.arange(b)
  later = (slot[None, :] == slot[:, None]) & write[None, :] & (pos[None, :] > pos[:, None])
  write = write & ~jnp.any(later, axis=1)
  dst = jnp.where(write, slot, m)
  return ReservoirState(
      x=state.x.at[dst].set(x.astype(state.x.dtype), mode="drop"),
      y=state.y.at[dst].set(y.astype(jnp.int32), mode="drop"),
      seen=state.seen + jnp.sum(mask).astype(jnp.int32),
      key=state.key,
  )


def reservoir_contents(state: ReservoirState):
  m = state.y.shape[0]
  filled = jnp.arange(m) < state.seen
  return state.x, state.y, filled.astype(jnp.float32), filled


RESERVOIR = StreamBuffer("reservoir", reservoir_init, reservoir_insert, reservoir_contents)


# Per-class queue ------------------------------------------------------------------------------


class QueueState(NamedTuple):
  """Per-class ring buffers.

  Attributes:
    x: [K, c, d] the last c examples of each class (ring order: slot = arrival index mod c).
    seen: [K] int32 examples of each class offered so far.
  """

  x: jax.Array
  seen: jax.Array


def queue_init(num_classes: int, capacity: int, dim: int, key=None) -> QueueState:
  del key
  return QueueState(jnp.zeros((num_classes, capacity, dim), jnp.float32),
                    jnp.zeros((num_classes,), jnp.int32))


def queue_insert(state: QueueState, x, y, mask=None) -> QueueState:
  """Appends the active rows to their class's ring; each class keeps its last c."""
  mask = _default_mask(y, mask)
  k, c, d = state.x.shape
  b = y.shape[0]
  y = y.astype(jnp.int32)
  pos = jnp.arange(b)
  same = (y[None, :] == y[:, None]) & mask[None, :]
  rank = jnp.sum(same & (pos[None, :] < pos[:, None]), axis=1)
  total = jnp.sum(same, axis=1)
  # Only the last c rows of a class in this batch survive; their ring slots are then distinct.
  write = mask & (rank >= total - c)
  slot = (state.seen[y] + rank) % c
  flat = jnp.where(write, y * c + slot, k * c)
  xs = state.x.reshape(k * c, d).at[flat].set(x.astype(state.x.dtype), mode="drop")
  seen = state.seen.at[jnp.where(mask, y, k)].add(1, mode="drop")
  return QueueState(xs.reshape(k, c, d), seen)


def queue_contents(state: QueueState):
  k, c, d = state.x.shape
  filled = (jnp.arange(c)[None, :] < state.seen[:, None]).reshape(-1)
  y = jnp.repeat(jnp.arange(k, dtype=jnp.int32), c)
  return state.x.reshape(k * c, d), y, filled.astype(jnp.float32), filled


QUEUE = StreamBuffer("queue", queue_init, queue_insert, queue_contents)


# Online k-means -------------------------------------------------------------------------------


class KMeansState(NamedTuple):
  """Per-class online k-means.

  Attributes:
    centroids: [K, c, d] centroids.
    weights: [K, c] float32 examples absorbed by each centroid.
    counts: [K] int32 seeded centroids per class, in [0, c].
  """

  centroids: jax.Array
  weights: jax.Array
  counts: jax.Array


def kmeans_init(num_classes: int, capacity: int, dim: int, key=None) -> KMeansState:
  del key
  k, c = num_classes, capacity
  return KMeansState(jnp.zeros((k, c, dim), jnp.float32), jnp.zeros((k, c), jnp.float32),
                     jnp.zeros((k,), jnp.int32))


def _kmeans_step(block, x):
  cents, w, n = block
  c = w.shape[0]
  full = n >= c
  diff = cents - x[None, :]
  nearest = jnp.argmin(jnp.sum(diff * diff, axis=-1))
  slot = jnp.where(full, nearest, n)
  w_new = jnp.where(full, w[slot] + 1.0, 1.0)
  # Running mean; on seeding (w_new = 1) this is exactly x.
  c_new = jnp.where(full, cents[slot] + (x - cents[slot]) / w_new, x)
  return cents.at[slot].set(c_new.astype(cents.dtype)), w.at[slot].set(w_new), jnp.minimum(n + 1, c)


def kmeans_insert(state: KMeansState, x, y, mask=None, max_width=None) -> KMeansState:
  """Online k-means update, sequential within a class, parallel across classes."""
  mask = _default_mask(y, mask)
  blocks = class_sequential_apply(tuple(state), _kmeans_step, x, y, mask, max_width)
  return KMeansState(*blocks)


def kmeans_contents(state: KMeansState):
  k, c, d = state.centroids.shape
  filled = (jnp.arange(c)[None, :] < state.counts[:, None]).reshape(-1)
  y = jnp.repeat(jnp.arange(k, dtype=jnp.int32), c)
  return state.centroids.reshape(k * c, d), y, state.weights.reshape(-1), filled


KMEANS = StreamBuffer("kmeans", kmeans_init, kmeans_insert, kmeans_contents)


_KINDS = {b.name: b for b in (EXSTREAM, RESERVOIR, QUEUE, KMEANS)}


def names() -> list[str]:
  """The buffer kinds."""
  return sorted(_KINDS)


def get(kind: str) -> StreamBuffer:
  """The :class:`StreamBuffer` of ``kind`` (one of :func:`names`)."""
  if kind not in _KINDS:
    raise ValueError(f"unknown buffer kind {kind!r}; valid: {names()}")
  return _KINDS[kind]
