"""Per-class block layout shared by queue, kmeans and exstream.

These policies keep ``K`` blocks of ``c`` items of ``d`` features ([K, c, d]) and compute distances,
so their items are 1-D. The helpers here check sizes, flatten blocks into :class:`Contents`, and
run a per-class update over a batch (:func:`class_sequential_apply`: sequential within a class,
parallel across classes).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from cljax.ops.buffers._base import Contents, check_sizes, example_spec


def per_class_capacity(name: str, capacity: int, num_classes: int, minimum: int = 1) -> int:
  """c = capacity // num_classes items per class; ValueError unless it divides and c >= minimum."""
  check_sizes(capacity, num_classes)
  c, rem = divmod(int(capacity), int(num_classes))
  if rem or c < minimum:
    raise ValueError(
        f"{name} keeps capacity // num_classes items per class: capacity ({capacity}) must be a "
        f"multiple of num_classes ({num_classes}) with at least {minimum} item(s) per class")
  return c


def feature_spec(name: str, example, float_only: bool = False) -> tuple[int, jnp.dtype]:
  """(d, dtype) of a 1-D item [d]; ValueError for other ranks.

  With ``float_only`` (policies that average items), a non-float dtype is stored as float32.
  """
  shape, dtype = example_spec(example)
  if len(shape) != 1:
    raise ValueError(f"{name} computes distances between items and needs 1-D items [d]; got an "
                     f"example of shape {shape} (flatten features first)")
  if float_only and not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.dtype(jnp.float32)
  return shape[0], dtype


def block_contents(x: jax.Array, filled: jax.Array, weight: jax.Array) -> Contents:
  """Contents of per-class blocks x [K, c, d], filled [K, c] bool, weight [K, c] -> K*c slots.

  Slot k*c + i is item i of class k.
  """
  k, c = filled.shape
  filled = filled.reshape(-1)
  y = jnp.where(filled, jnp.repeat(jnp.arange(k, dtype=jnp.int32), c), -1)
  w = jnp.where(filled, weight.reshape(-1), 0.0).astype(jnp.float32)
  return Contents(x.reshape(k * c, *x.shape[2:]), y, w, filled)


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
