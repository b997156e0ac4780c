"""Tests for cljax/ops/buffers/queue.py: per-class FIFO of the last c items."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.ops.buffers import queue
from tests.ops.buffers import common

NAME, K, C, D = "queue", 4, 3, 5
CAP = K * C


def reference(xs, ys, mask, k, c):
  """Per-class rings: the i-th example of class y (0-based) sits in ring slot i mod c."""
  rings = np.zeros((k, c, xs.shape[1]), xs.dtype)
  seen = np.zeros(k, int)
  for x, y in zip(xs[mask], ys[mask]):
    rings[y, seen[y] % c] = x
    seen[y] += 1
  return rings, seen


def test_matches_reference_and_keeps_last_c():
  xs, ys = common.stream(0, 100, K, D)
  ys[5:40] = 2  # more than c of one class inside single batches
  mask = np.random.default_rng(1).random(100) < 0.8
  state = common.check_batching_and_masks(NAME, CAP, K, xs, ys, mask)
  rings, seen = reference(xs, ys, mask, K, C)
  np.testing.assert_array_equal(state.x, rings)
  np.testing.assert_array_equal(state.class_seen, seen)
  x, y, w, m = (np.asarray(a) for a in queue.contents(state))
  for k in range(K):
    want = xs[mask & (ys == k)][-C:]
    got = x[(y == k) & m]
    # Ring order aside, the stored set is exactly the class's last c examples.
    np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(want, axis=0))
  assert (w[m] == 1).all()


def test_protocol_pieces():
  xs, ys = common.stream(2, 7, K, D)  # some classes not yet full
  state = common.run(NAME, CAP, K, xs, ys)
  common.check_pieces(NAME, state, CAP, K, xs[0])


def test_sizes_checked():
  with pytest.raises(ValueError, match="multiple of num_classes"):
    queue.init(common.KEY, 10, np.zeros(D, np.float32), K)
  with pytest.raises(ValueError, match="1-D"):
    queue.init(common.KEY, CAP, np.zeros((2, 2), np.float32), K)
  assert queue.init(common.KEY, CAP, jax.ShapeDtypeStruct((D,), jnp.bfloat16), K).x.dtype == \
      jnp.bfloat16


def test_no_recompiles():
  xs, ys = common.stream(4, 64, K, D)
  common.check_no_recompiles(NAME, CAP, K, xs, ys)
