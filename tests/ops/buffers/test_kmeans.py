"""Tests for cljax/ops/buffers/kmeans.py: per-class online k-means."""

import jax.numpy as jnp
import numpy as np
import pytest

from cljax.ops.buffers import kmeans
from tests.ops.buffers import common

NAME, K, C, D = "kmeans", 4, 3, 5
CAP = K * C


def numpy_kmeans(xs, ys, num_classes, capacity):
  """Sequential online k-means: centroids [K, c, d], weights [K, c], counts [K]."""
  cents = np.zeros((num_classes, capacity, xs.shape[1]), np.float32)
  w = np.zeros((num_classes, capacity), np.float32)
  n = np.zeros(num_classes, int)
  for x, y in zip(xs, ys):
    if n[y] < capacity:
      cents[y, n[y]], w[y, n[y]] = x, 1
      n[y] += 1
    else:
      j = int(np.argmin(((cents[y] - x) ** 2).sum(-1)))
      w[y, j] += 1
      cents[y, j] += (x - cents[y, j]) / w[y, j]
  return cents, w, n


def test_matches_numpy_and_weights_sum():
  xs, ys = common.stream(0, 100, K, D)
  ys[10:40] = 1  # long single-class runs inside batches
  mask = np.random.default_rng(1).random(100) < 0.8
  state = common.check_batching_and_masks(NAME, CAP, K, xs, ys, mask)
  cents, w, n = numpy_kmeans(xs[mask], ys[mask], K, C)
  np.testing.assert_array_equal(state.counts, n)
  np.testing.assert_array_equal(state.weights, w)
  np.testing.assert_allclose(state.centroids, cents, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(state.weights).sum(1),
                                np.bincount(ys[mask], minlength=K))


def test_protocol_pieces():
  xs, ys = common.stream(2, 30, K, D)
  state = common.run(NAME, CAP, K, xs, ys)
  c = common.check_contents(NAME, state, CAP, xs[0])
  assert float(c.weight.sum()) == 30.0  # weights = examples absorbed
  common.check_sample(NAME, state)
  common.check_distinct(NAME, state)
  common.check_empty(NAME, CAP, K, jnp.zeros((D,), jnp.float32))


def test_sizes_checked():
  with pytest.raises(ValueError, match="multiple of num_classes"):
    kmeans.init(common.KEY, 3, np.zeros(D, np.float32), K)
  with pytest.raises(ValueError, match="1-D"):
    kmeans.init(common.KEY, CAP, np.zeros((), np.float32), K)
  assert kmeans.init(common.KEY, CAP, np.zeros(D, np.uint8), K).centroids.dtype == jnp.float32


def test_no_recompiles():
  xs, ys = common.stream(4, 64, K, D)
  common.check_no_recompiles(NAME, CAP, K, xs, ys)
