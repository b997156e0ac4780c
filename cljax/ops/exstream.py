"""ExStream: fixed-capacity per-class buffers of merged cluster centroids.

Hayes, Cahill and Kanan, "Memory Efficient Experience Replay for Streaming Learning", ICRA 2019
(reference code: tyler-hayes/ExStream). Each class k keeps at most ``c`` centroids, each with a
weight (the number of stream examples it summarises):

* while class y holds fewer than c entries, the new example x is appended with weight 1;
* when it is full: among the class's *existing* entries (x excluded) the pair (i, j), i < j, with
  the smallest Euclidean distance is merged into the weight-averaged centroid
  ``(w_i C_i + w_j C_j) / (w_i + w_j)`` with weight ``w_i + w_j``, and x takes the freed slot with
  weight 1.

Slot convention (as in the reference code): the merged centroid goes to the HIGHER slot j and the
new example to the LOWER slot i. Ties between equally close pairs go to the lexicographically
smallest (i, j), which is what the reference's row-major ``argmin`` over the full distance matrix
picks. Within a class, slots are in order of first insertion, as the reference's class-filtered
view of its global buffer is, so slot indices mean the same thing in both.

State is a pytree of fixed shapes (``ExStreamBuffer``); :func:`insert` is jit-friendly and ingests
a whole batch at once. Examples of different classes are processed in parallel, examples of the same
class one after another in stream order, so the result equals one-at-a-time insertion exactly (see
:func:`class_sequential_apply`).

Squared distances between a class's slots are cached in the state (``dists`` [K, c, c]): an insert
changes at most two slots, so only two rows/columns are recomputed, O(c d) per example instead of
the O(c^2 d) of recomputing all pairs. Cached entries are computed with the same formula
(sum of squared differences) a full recompute would use.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class ExStreamBuffer(NamedTuple):
  """Per-class ExStream buffers of ``K`` classes, capacity ``c`` per class, feature size ``d``.

  Attributes:
    centroids: [K, c, d] float32 cluster centroids; rows at slots >= counts[k] are zero.
    weights: [K, c] float32 number of stream examples each centroid summarises (0 on empty slots).
    counts: [K] int32 filled slots per class, in [0, c].
    dists: [K, c, c] float32 cached squared Euclidean distances between the slots of a class;
      only entries between filled slots are meaningful.
  """

  centroids: jax.Array
  weights: jax.Array
  counts: jax.Array
  dists: jax.Array


def init(num_classes: int, capacity: int, dim: int, dtype=jnp.float32) -> ExStreamBuffer:
  """Empty buffers: ``num_classes`` classes of ``capacity`` (>= 2) slots of ``dim`` features."""
  if capacity < 2:
    # A merge needs a pair of existing entries; the reference silently corrupts its buffer at c=1.
    raise ValueError(f"ExStream needs capacity >= 2 per class, got {capacity}")
  k, c = num_classes, capacity
  return ExStreamBuffer(
      centroids=jnp.zeros((k, c, dim), dtype),
      weights=jnp.zeros((k, c), jnp.float32),
      counts=jnp.zeros((k,), jnp.int32),
      dists=jnp.zeros((k, c, c), jnp.float32),
  )


def _sq_dists_to(cents: jax.Array, v: jax.Array) -> jax.Array:
  """Squared distances [c] of every row of ``cents`` [c, d] to ``v`` [d]."""
  diff = cents - v[None, :]
  return jnp.sum(diff * diff, axis=-1)


def closest_pair(dists: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Indices (i, j), i < j, of the closest pair in a full class's [c, c] distance matrix.

  Ties resolve to the lexicographically smallest (i, j) (first minimum in row-major order).
  """
  c = dists.shape[-1]
  upper = jnp.triu(jnp.ones((c, c), bool), k=1)
  flat = jnp.argmin(jnp.where(upper, dists, jnp.inf).reshape(-1))
  return flat // c, flat % c


def _insert_into_class(block, x):
  """One ExStream insert of ``x`` [d] into one class's (centroids [c,d], weights [c], count, dists).

  Written branch-free (both outcomes computed, one selected) so that it vmaps over classes.
  """
  cents, w, n, dists = block
  c = w.shape[0]
  full = n >= c
  i, j = closest_pair(dists)
  w_i, w_j = w[i], w[j]
  # The guard only matters before the class is full, where `merged` is computed but discarded.
  merged = (cents[i] * w_i + cents[j] * w_j) / jnp.where(full, w_i + w_j, 1.0)
  # Not full: x goes to slot n. Full: merged centroid to j, x to i (the reference's convention).
  slot_x = jnp.where(full, i, n)
  cents = jnp.where(full, cents.at[j].set(merged.astype(cents.dtype)), cents)
  w = jnp.where(full, w.at[j].set(w_i + w_j), w)
  cents = cents.at[slot_x].set(x.astype(cents.dtype))
  w = w.at[slot_x].set(1.0)
  row_x = _sq_dists_to(cents, cents[slot_x])
  dists = dists.at[slot_x, :].set(row_x).at[:, slot_x].set(row_x)
  row_j = _sq_dists_to(cents, cents[j])
  dists = jnp.where(full, dists.at[j, :].set(row_j).at[:, j].set(row_j), dists)
  return cents, w, jnp.minimum(n + 1, c), dists


# Widest parallel chunk by default. Narrow chunks keep the gathered class blocks and the step's
# temporaries ([W, c, d] each) in cache: at K=1000, c=16, d=512, B=256 on CPU, widths 8-16 inserted
# ~55k examples/s against ~24k at width 256 (experiments/bench/exstream.py, notes/exstream.md).
DEFAULT_MAX_WIDTH = 16


def _width_ladder(max_width: int) -> tuple[int, ...]:
  widths, w = [], 1
  while w < max_width:
    widths.append(w)
    w *= 4
  widths.append(max_width)
  return tuple(widths)


def class_sequential_apply(blocks, step: Callable, x: jax.Array, y: jax.Array,
                           active: jax.Array, max_width: int | None = None):
  """Applies ``step`` to per-class state for a batch, sequential within a class, parallel across.

  Equivalent to ``for b in range(B): if active[b]: blocks[y[b]] = step(blocks[y[b]], x[b])`` but
  vectorised: the r-th occurrence of every class forms round r; inside a round all classes are
  distinct, so their steps run in parallel (vmap) and write back without conflicts; rounds run in
  order. A round is cut into chunks whose width comes from a ladder 1, 4, 16, ..., max_width (the
  smallest width that holds the rest of the round), so a batch of a single class costs B one-lane
  steps rather than B full-width ones. Each width has its own while loop and blocks are written
  back with in-place dynamic_update_slice: no conditional carries the [K, ...] buffers (XLA copied
  them on every iteration when it did). Shapes never depend on the data: no recompiles.

  Cost per active row: one gather, one ``step`` and one write of a class block, plus O(B^2)
  integer work per call to rank rows within their class (B up to ~46k for int32 sort keys).

  Args:
    blocks: pytree whose leaves all have leading dimension K (one block per class).
    step: ``(block, x_row) -> block`` for one class's block (leaves without the K axis) and one
      example ``x_row`` [...]; must be vmappable.
    x: [B, ...] incoming examples.
    y: [B] int32 classes in [0, K).
    active: [B] bool; inactive rows are skipped.
    max_width: widest parallel chunk; defaults to min(B, K, DEFAULT_MAX_WIDTH).

  Returns:
    The updated blocks.
  """
  b = y.shape[0]
  k = jax.tree.leaves(blocks)[0].shape[0]
  y = y.astype(jnp.int32)
  active = active.astype(bool)
  if max_width is None:
    max_width = min(k, DEFAULT_MAX_WIDTH)
  widths = _width_ladder(max(1, min(max_width, b)))
  w_max = widths[-1]

  pos = jnp.arange(b)
  same = (y[:, None] == y[None, :]) & active[None, :] & (pos[None, :] < pos[:, None])
  rank = jnp.sum(same, axis=1).astype(jnp.int32)  # occurrences of y[b] earlier in the batch
  big = jnp.int32(b + 1)
  rank_or_big = jnp.where(active, rank, big)
  order = jnp.argsort(rank_or_big * b + pos)  # by round, then stream order; inactive last
  rank_sorted = rank_or_big[order]
  round_end = jnp.searchsorted(rank_sorted, rank_sorted, side="right").astype(jnp.int32)
  n_active = jnp.sum(active).astype(jnp.int32)
  # Padding so a chunk's dynamic_slice never gets clamped (which would shift it).
  order = jnp.concatenate([order, jnp.zeros((w_max,), order.dtype)]).astype(jnp.int32)

  # Index of the ladder width that serves a chunk starting at sorted position p; padded so that
  # p == B (evaluated next to the p < n_active guard) stays in range.
  round_end = jnp.concatenate([round_end, jnp.full((1,), b, jnp.int32)])
  widths_arr = jnp.asarray(widths, jnp.int32)

  def width_index(p):
    rem = round_end[p] - p
    return jnp.minimum(jnp.searchsorted(widths_arr, rem, side="left"), len(widths) - 1)

  def level(wi, width):
    vstep = jax.vmap(step)

    def chunk(carry):
      blocks, p = carry
      n = jnp.minimum(round_end[p] - p, width)
      idx = jax.lax.dynamic_slice(order, (p,), (width,))
      cls = y[idx]
      new = vstep(jax.tree.map(lambda a: a[cls], blocks), x[idx])

      # One class block at a time: dynamic_update_slice in a loop updates the [K, ...] buffers in
      # place, where a multi-row scatter or a conditional returning them made XLA copy them.
      def write(lane, blocks):
        return jax.tree.map(
            lambda a, v: jax.lax.dynamic_update_index_in_dim(a, v[lane].astype(a.dtype),
                                                             cls[lane], 0), blocks, new)

      return jax.lax.fori_loop(0, n, write, blocks), p + n

    def more(carry):
      p = carry[1]
      return (p < n_active) & (width_index(p) == wi)

    return lambda carry: jax.lax.while_loop(more, chunk, carry)

  # Each width has its own while loop (no lax.switch: a conditional carrying the buffers copies
  # them); the outer loop sweeps the levels until every active row is in.
  levels = [level(wi, w) for wi, w in enumerate(widths)]

  def sweep(carry):
    for run_level in levels:
      carry = run_level(carry)
    return carry

  blocks, _ = jax.lax.while_loop(lambda carry: carry[1] < n_active, sweep,
                                 (blocks, jnp.int32(0)))
  return blocks


def insert(buf: ExStreamBuffer, x: jax.Array, y: jax.Array,
           mask: jax.Array | None = None, max_width: int | None = None) -> ExStreamBuffer:
  """Inserts a batch into the buffers, exactly as inserting its rows one at a time in order.

  Args:
    buf: the buffers (K classes, capacity c, d features).
    x: [B, d] float examples.
    y: [B] int labels in [0, K).
    mask: [B] bool, rows to insert (e.g. ``valid & labeled``); all rows when None.
    max_width: see :func:`class_sequential_apply`.

  Returns:
    The updated buffers. Weights of class k sum to the number of class-k rows ever inserted.
  """
  if mask is None:
    mask = jnp.ones(y.shape, bool)
  blocks = (buf.centroids, buf.weights, buf.counts, buf.dists)
  blocks = class_sequential_apply(blocks, _insert_into_class, x, y, mask, max_width)
  return ExStreamBuffer(*blocks)


def contents(buf: ExStreamBuffer):
  """The buffer as flat arrays of K*c items.

  Returns:
    (x [K*c, d], y [K*c] int32, weight [K*c] float32, mask [K*c] bool of filled slots).
  """
  k, c, d = buf.centroids.shape
  filled = jnp.arange(c)[None, :] < buf.counts[:, None]
  y = jnp.repeat(jnp.arange(k, dtype=jnp.int32), c)
  return buf.centroids.reshape(k * c, d), y, buf.weights.reshape(-1), filled.reshape(-1)
