"""Tests for cljax/ops/buffers/greedy.py: GDumb's greedy class-balanced sampler."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.ops.buffers import common

NAME, CAP, K = "greedy", 12, 4


@jax.jit
def _rank(key, n, size):
  """The policy's draw for stream position n: the victim's rank in [0, size) within its class."""
  return jax.random.randint(jax.random.fold_in(key, n), (), 0, jnp.maximum(size, 1))


def reference(key, ys, mask, cap, k):
  """Sequential GDumb sampler: the stream index held by each slot (-1 empty)."""
  slots, labels = -np.ones(cap, int), -np.ones(cap, int)
  cc = np.zeros(k, int)
  for n, t in enumerate(np.flatnonzero(mask)):
    y = ys[t]
    count = int((slots >= 0).sum())
    if count < cap:
      slot = count
    else:
      big = int(np.argmax(cc))
      if cc[y] >= cc[big]:
        continue  # its class is already a largest one: dropped
      slot = np.flatnonzero(labels == big)[int(_rank(key, n, cc[big]))]
      cc[big] -= 1
    slots[slot], labels[slot] = t, y
    cc[y] += 1
  return slots


def test_matches_sequential_reference():
  xs, ys = common.stream(0, 120, K, probs=[0.55, 0.25, 0.15, 0.05])
  mask = np.random.default_rng(1).random(120) < 0.8
  state = common.check_batching_and_masks(NAME, CAP, K, xs, ys, mask)
  slots = reference(common.KEY, ys, mask, CAP, K)
  np.testing.assert_array_equal(state.x, xs[slots])
  np.testing.assert_array_equal(state.y, ys[slots])
  np.testing.assert_array_equal(state.class_count, np.bincount(ys[slots], minlength=K))


def test_keeps_the_first_items_of_a_top_class():
  # Class 0 fills the buffer, then class 1 takes slots until the two are level; from then on
  # neither class enters again: no probabilistic replacement within a class.
  ys = np.r_[np.zeros(10, int), np.ones(10, int), np.zeros(5, int)].astype(np.int32)
  xs = np.arange(25, dtype=np.float32)[:, None]
  state = common.run(NAME, 6, 2, xs, ys)
  np.testing.assert_array_equal(state.class_count, [3, 3])
  held = np.sort(np.asarray(state.x[:, 0]).astype(int))
  np.testing.assert_array_equal(held[3:], [10, 11, 12])  # class 1's first three


def test_protocol_pieces():
  xs, ys = common.stream(2, 40, K)
  state = common.run(NAME, CAP, K, xs, ys)
  common.check_pieces(NAME, state, CAP, K, xs[0])


def test_no_recompiles():
  xs, ys = common.stream(4, 64, K)
  common.check_no_recompiles(NAME, CAP, K, xs, ys)
