"""Tests for cljax/ops/buffers/append.py: append until full, then drop; clear."""

import jax
import jax.numpy as jnp
import numpy as np

from cljax.ops import buffers
from cljax.ops.buffers import append
from tests.ops.buffers import common

NAME, CAP, K = "append", 20, 4


def reference(xs, ys, mask, cap, k):
  """Plain-Python append-until-full: (x rows, labels, class counts)."""
  keep = [t for t in np.flatnonzero(mask)][:cap]
  return xs[keep], ys[keep], np.bincount(ys[keep], minlength=k)


def test_matches_reference_and_counts():
  xs, ys = common.stream(0, 60, K)
  mask = np.random.default_rng(1).random(60) < 0.7
  state = common.check_batching_and_masks(NAME, CAP, K, xs, ys, mask)
  x, y, cc = reference(xs, ys, mask, CAP, K)
  np.testing.assert_array_equal(state.x, x)
  np.testing.assert_array_equal(state.y, y)
  np.testing.assert_array_equal(state.class_count, cc)
  np.testing.assert_array_equal(state.class_seen, np.bincount(ys[mask], minlength=K))
  assert int(state.count) == CAP and int(state.seen) == mask.sum()
  assert int(state.seen - state.count) == mask.sum() - CAP  # the dropped rows


def test_partly_filled():
  xs, ys = common.stream(2, 13, K)
  state = common.run(NAME, CAP, K, xs, ys, batch=7)
  assert int(state.count) == 13
  np.testing.assert_array_equal(state.y, np.r_[ys, -np.ones(CAP - 13, int)])
  common.check_contents(NAME, state, CAP, xs[0])
  common.check_sample(NAME, state)
  common.check_distinct(NAME, state)


def test_clear_keeps_shapes_and_key():
  xs, ys = common.stream(3, 30, K)
  state = common.run(NAME, CAP, K, xs, ys)
  empty = append.clear(state)
  for a, b in zip(empty, state):
    assert a.shape == b.shape and a.dtype == b.dtype
  np.testing.assert_array_equal(empty.key, state.key)
  assert int(empty.count) == 0 and int(empty.seen) == 0 and not np.asarray(empty.class_count).any()
  assert not np.asarray(buffers.get(NAME).contents(empty).mask).any()
  # Refilled, it is the buffer a fresh one would be (every stale slot overwritten again).
  common.assert_same(common.feed(NAME, empty, xs, ys), state)


def test_uint8_items_and_empty():
  example = jax.ShapeDtypeStruct((2, 3), jnp.uint8)
  state = buffers.get(NAME).init(common.KEY, 5, example, 3)
  assert state.x.dtype == jnp.uint8 and state.x.shape == (5, 2, 3)
  common.check_empty(NAME, 5, 3, example)


def test_no_recompiles():
  xs, ys = common.stream(4, 64, K)
  common.check_no_recompiles(NAME, CAP, K, xs, ys)
