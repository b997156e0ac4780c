"""Tests for cljax/ops/buffers/reservoir.py: Vitter's Algorithm R with per-position draws."""

import jax
import jax.numpy as jnp
import numpy as np

from cljax.ops.buffers import reservoir
from tests.ops.buffers import common

NAME, CAP, K = "reservoir", 12, 4


def reference(key, ys, mask, cap):
  """Sequential Algorithm R fed the policy's draws: the stream index in each slot (-1 empty)."""
  slots = -np.ones(cap, int)
  for n, t in enumerate(np.flatnonzero(mask)):
    if n < cap:
      slots[n] = t
    else:
      j = int(jax.random.randint(jax.random.fold_in(key, n), (), 0, n + 1))
      if j < cap:
        slots[j] = t
  return slots


def test_matches_algorithm_r():
  xs, ys = common.stream(0, 90, K)
  ys[20:50] = 1  # runs of one class change nothing for a class-agnostic rule
  mask = np.random.default_rng(1).random(90) < 0.8
  state = common.check_batching_and_masks(NAME, CAP, K, xs, ys, mask)
  slots = reference(common.KEY, ys, mask, CAP)
  np.testing.assert_array_equal(state.x, xs[slots])
  np.testing.assert_array_equal(state.y, ys[slots])
  np.testing.assert_array_equal(state.class_count, np.bincount(ys[slots], minlength=K))
  assert int(state.seen) == mask.sum() and int(state.count) == CAP


def test_inclusion_is_uniform():
  # Item t of a stream of N = 60 survives in the M = 12 slots with probability M / N = 1/5.
  n, trials, m = 60, 3000, CAP
  ids = np.arange(n, dtype=np.float32)[:, None]
  y, mask = np.zeros(n, np.int32), np.ones(n, bool)

  def one_run(key):
    return reservoir.insert(reservoir.init(key, m, ids[0], 1), ids, y, mask).x[:, 0]

  kept = np.asarray(jax.jit(jax.vmap(one_run))(jax.random.split(jax.random.key(123), trials)))
  kept = kept.astype(int)
  assert all(len(set(row)) == m for row in kept)  # no item kept twice
  counts = np.bincount(kept.ravel(), minlength=n)
  p = m / n
  expected, sd = trials * p, np.sqrt(trials * p * (1 - p))
  # Fixed seed: deterministic. Bounds are loose (5 sd per item; chi-square with 59 dof has mean 59,
  # sd ~11) so that only a real bias -- e.g. favouring early or late items -- fails.
  assert np.abs(counts - expected).max() < 5 * sd
  assert (((counts - expected) ** 2) / (expected * (1 - p))).sum() < 120
  # No drift along the stream: first and last thirds are kept equally often.
  assert abs(counts[:20].mean() - counts[-20:].mean()) < 3 * sd / np.sqrt(20) * np.sqrt(2)


def test_protocol_pieces():
  xs, ys = common.stream(2, 40, K)
  state = common.run(NAME, CAP, K, xs, ys)
  common.check_pieces(NAME, state, CAP, K, xs[0])
  few = common.run(NAME, CAP, K, xs[:3], ys[:3])
  common.check_distinct(NAME, few, n=5, trials=20)  # fewer filled than asked: each once first


def test_no_recompiles():
  xs, ys = common.stream(4, 64, K)
  common.check_no_recompiles(NAME, CAP, K, xs, ys)
