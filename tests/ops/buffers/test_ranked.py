"""Tests for cljax/ops/buffers/ranked.py: iCaRL's memory, each class's first items."""

import numpy as np

from tests.ops.buffers import common

NAME, CAP, K = "ranked", 12, 4


def reference(ys, mask, cap):
  """Sequential iCaRL memory (Rebuffi et al. 2017, Algorithm 5 "reduce exemplar set" after every
  offered item): the stream indices held, in slot order."""
  held, offered = [], {}
  for t in np.flatnonzero(mask):
    y = int(ys[t])
    offered[y] = offered.get(y, 0) + 1
    m = cap // len(offered)
    if offered[y] <= m:
      held.append(t)
    ranks = {}
    keep = []
    for s in held:  # truncate every class to its first m
      ranks[ys[s]] = ranks.get(ys[s], 0) + 1
      if ranks[ys[s]] <= m:
        keep.append(s)
    held = keep
  return np.asarray(held, int)


def test_matches_sequential_reference():
  xs, ys = common.stream(0, 120, K, probs=[0.55, 0.25, 0.15, 0.05])
  ys[:30] = ys[:30] % 2  # classes arrive over time: the quota shrinks while the stream runs
  mask = np.random.default_rng(1).random(120) < 0.8
  state = common.check_batching_and_masks(NAME, CAP, K, xs, ys, mask)
  slots = reference(ys, mask, CAP)
  n = len(slots)
  assert int(state.count) == n
  np.testing.assert_array_equal(np.asarray(state.x)[:n], xs[slots])
  np.testing.assert_array_equal(np.asarray(state.y)[:n], ys[slots])
  np.testing.assert_array_equal(state.class_count, np.bincount(ys[slots], minlength=K))
  # ranks: position among the offered items of the class
  offered = np.cumsum(np.eye(K, dtype=int)[ys] * mask[:, None], 0)[np.arange(120), ys] - 1
  np.testing.assert_array_equal(np.asarray(state.rank)[:n], offered[slots])


def test_herding_order_is_kept_and_truncated():
  # Two classes offered in a chosen order (iCaRL: herding order), then two more classes: each
  # class keeps its first cap // 4 items of that order.
  order0, order1 = [5, 1, 3, 0, 2, 4], [9, 7, 11, 6, 10, 8]
  xs = np.arange(12, dtype=np.float32)[:, None]
  ys = np.r_[np.zeros(6), np.ones(6)].astype(np.int32)
  state = common.run(NAME, 8, K, xs[order0 + order1], ys[order0 + order1])
  np.testing.assert_array_equal(np.asarray(state.x)[:8, 0], order0[:4] + order1[:4])
  new_x = np.arange(12, 16, dtype=np.float32)[:, None]
  state = common.feed(NAME, state, new_x, np.array([2, 2, 3, 3], np.int32))
  np.testing.assert_array_equal(np.asarray(state.x)[:8, 0], order0[:2] + order1[:2] +
                                [12, 13, 14, 15])


def test_protocol_pieces():
  xs, ys = common.stream(2, 40, K)
  state = common.run(NAME, CAP, K, xs, ys)
  common.check_pieces(NAME, state, CAP, K, xs[0])


def test_no_recompiles():
  xs, ys = common.stream(4, 64, K)
  common.check_no_recompiles(NAME, CAP, K, xs, ys)
