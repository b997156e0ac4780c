"""Tests for cljax/ops/buffers/class_balanced.py: class-balanced reservoir (Chrysakis & Moens)."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.ops.buffers import common

NAME, CAP, K = "class_balanced", 12, 4


@jax.jit
def _draws(key, n, size):
  """The policy's draws for stream position n: (coin u, victim rank r in [0, size))."""
  k_u, k_slot = jax.random.split(jax.random.fold_in(key, n))
  return jax.random.uniform(k_u), jax.random.randint(k_slot, (), 0, jnp.maximum(size, 1))


def reference(key, ys, mask, cap, k):
  """Sequential class-balanced reservoir: the stream index held by each slot (-1 empty)."""
  slots, labels = -np.ones(cap, int), -np.ones(cap, int)
  cc, seen = np.zeros(k, int), np.zeros(k, int)
  for n, t in enumerate(np.flatnonzero(mask)):
    y = ys[t]
    seen[y] += 1
    count = int((slots >= 0).sum())
    if count < cap:
      slot = count
    else:
      largest = cc[y] >= cc.max()
      victim = y if largest else int(np.argmax(cc))
      u, r = (np.asarray(a) for a in _draws(key, n, cc[victim]))
      if largest and not np.float32(u) * np.float32(seen[y]) < np.float32(cc[y]):
        continue  # an example of a largest class lost its coin: dropped
      slot = np.flatnonzero(labels == victim)[int(r)]
      cc[labels[slot]] -= 1
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
  np.testing.assert_array_equal(state.class_seen, np.bincount(ys[mask], minlength=K))


def test_balances_an_imbalanced_stream():
  ys = np.r_[np.zeros(150, int), np.ones(30, int), np.full(20, 2)].astype(np.int32)
  xs = np.arange(200, dtype=np.float32)[:, None]
  state = common.run(NAME, 30, 5, xs, ys)
  cc = np.asarray(state.class_count)
  np.testing.assert_array_equal(cc, [10, 10, 10, 0, 0])
  # Stored rows are the originals of the stored labels.
  np.testing.assert_array_equal(ys[np.asarray(state.x[:, 0]).astype(int)], state.y)


def test_protocol_pieces():
  xs, ys = common.stream(2, 40, K)
  state = common.run(NAME, CAP, K, xs, ys)
  common.check_pieces(NAME, state, CAP, K, xs[0])


def test_no_recompiles():
  xs, ys = common.stream(4, 64, K)
  common.check_no_recompiles(NAME, CAP, K, xs, ys)
