"""Tests for cljax/ops/buffers/exstream.py (the merge rule against a NumPy loop, invariants) and
for the per-class batching of _per_class.class_sequential_apply."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.ops.buffers import exstream as ex
from cljax.ops.buffers._per_class import class_sequential_apply
from tests.ops.buffers import common

NAME, K, C, D, B = "exstream", 5, 4, 6, 16  # one set of shapes, so each function compiles once
CAP = K * C


def numpy_exstream(xs, ys, num_classes, capacity, mask=None):
  """Plain sequential ExStream (the reference's rule, recomputing all pair distances).

  Returns centroids [K, c, d], weights [K, c], counts [K].
  """
  d = xs.shape[1]
  cents = np.zeros((num_classes, capacity, d), np.float32)
  w = np.zeros((num_classes, capacity), np.float32)
  n = np.zeros(num_classes, np.int64)
  for t, (x, y) in enumerate(zip(xs, ys)):
    if mask is not None and not mask[t]:
      continue
    if n[y] < capacity:
      cents[y, n[y]] = x
      w[y, n[y]] = 1
      n[y] += 1
      continue
    h = cents[y]
    dist = ((h[:, None, :] - h[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    i, j = divmod(int(np.argmin(dist)), capacity)  # first minimum, row-major: i < j
    i, j = min(i, j), max(i, j)
    merged = (h[i] * w[y, i] + h[j] * w[y, j]) / (w[y, i] + w[y, j])
    cents[y, j], w[y, j] = merged, w[y, i] + w[y, j]
    cents[y, i], w[y, i] = x, 1
  return cents, w, n


def _stream(seed, n, integer=False):
  rng = np.random.default_rng(seed)
  ys = rng.integers(0, K, size=n).astype(np.int32)
  if integer:
    # Each class draws from C - 1 integer prototypes, so a full class always holds a duplicate
    # pair (distance 0), often several: the tie-break rule decides every merge, and merging equal
    # points is exact, so no rounding difference between implementations can hide or fake a tie.
    protos = rng.integers(0, 4, size=(K, C - 1, D)).astype(np.float32)
    xs = protos[ys, rng.integers(0, C - 1, size=n)]
  else:
    xs = rng.normal(size=(n, D)).astype(np.float32)
  return xs, ys


def _run(xs, ys, mask=None):
  return common.run(NAME, CAP, K, xs, ys, mask, batch=B)


@pytest.mark.parametrize("seed,integer", [(0, False), (1, False), (2, True)])
def test_matches_numpy_reference(seed, integer):
  xs, ys = _stream(seed, 300, integer)
  state = _run(xs, ys)
  cents, w, n = numpy_exstream(xs, ys, K, C)
  np.testing.assert_array_equal(state.counts, n)
  np.testing.assert_array_equal(state.weights, w)
  np.testing.assert_allclose(state.centroids, cents, rtol=1e-5, atol=1e-5)


def test_batching_and_masks():
  xs, ys = _stream(4, 160)
  ys[20:60] = 2  # single-class runs inside batches force many sequential rounds
  mask = np.random.default_rng(5).random(160) < 0.6
  state = common.check_batching_and_masks(NAME, CAP, K, xs, ys, mask)
  cents, w, _ = numpy_exstream(xs, ys, K, C, mask)
  np.testing.assert_array_equal(state.weights, w)
  np.testing.assert_allclose(state.centroids, cents, rtol=1e-5, atol=1e-5)


def test_weights_sum_to_seen_and_capacity_holds():
  xs, ys = _stream(3, 208)
  state = ex.init(common.KEY, CAP, xs[0], K)
  insert = common.jitted_insert(NAME)
  for s in range(0, 208, B):
    state = insert(state, xs[s:s + B], ys[s:s + B], np.ones(B, bool))
    seen = np.bincount(ys[:s + B], minlength=K)
    w, counts = np.asarray(state.weights), np.asarray(state.counts)
    np.testing.assert_array_equal(w.sum(1), seen)
    np.testing.assert_array_equal(counts, np.minimum(seen, C))
    filled = np.arange(C)[None, :] < counts[:, None]
    assert (w[filled] >= 1).all() and (w[~filled] == 0).all()


def test_slot_convention():
  # Class 0 holds 0, 10, 10.5, 20 (c = 4); the closest pair is slots (1, 2): the merged centroid
  # (weights 1 and 1) goes to the higher slot 2 and the new example to the lower slot 1.
  xs = np.zeros((5, D), np.float32)
  xs[:, 0] = [0.0, 10.0, 10.5, 20.0, 99.0]
  state = _run(xs, np.zeros(5, np.int32))
  np.testing.assert_allclose(np.asarray(state.centroids)[0, :, 0], [0.0, 99.0, 10.25, 20.0])
  np.testing.assert_array_equal(np.asarray(state.weights)[0], [1, 1, 2, 1])


def test_closest_pair_tie_break():
  dist = jnp.asarray([[0, 1, 1, 5], [1, 0, 1, 5], [1, 1, 0, 5], [5, 5, 5, 0]], jnp.float32)
  i, j = ex.closest_pair(dist)
  assert (int(i), int(j)) == (0, 1)


def test_protocol_pieces():
  xs, ys = _stream(6, 12)
  state = _run(xs, ys)
  c = common.check_contents(NAME, state, CAP, xs[0])
  np.testing.assert_array_equal(np.asarray(c.y)[np.asarray(c.mask)],
                                np.repeat(np.arange(K), C)[np.asarray(c.mask)])
  assert int(c.mask.sum()) == int(state.counts.sum()) and float(c.weight.sum()) == 12.0
  full = _run(*_stream(7, 80))
  common.check_sample(NAME, full)
  common.check_distinct(NAME, full)
  common.check_empty(NAME, CAP, K, jnp.zeros((D,), jnp.float32))


def test_sizes_checked():
  with pytest.raises(ValueError, match="at least 2"):
    ex.init(common.KEY, 3, np.zeros(4, np.float32), 3)  # c = 1: a merge needs a pair
  with pytest.raises(ValueError, match="multiple of num_classes"):
    ex.init(common.KEY, 7, np.zeros(4, np.float32), 3)
  with pytest.raises(ValueError, match="1-D"):
    ex.init(common.KEY, 6, np.zeros((2, 2), np.float32), 3)


def test_no_recompiles():
  common.check_no_recompiles(NAME, CAP, K, *_stream(8, 64))


def test_class_sequential_apply_counts_in_stream_order():
  # A generic step that appends the row to a per-class log: exposes any reordering.
  log = jnp.full((3, 8), -1, jnp.int32)
  n = jnp.zeros((3,), jnp.int32)

  def step(block, x):
    lg, cnt = block
    return lg.at[cnt].set(x), cnt + 1

  y = jnp.asarray([0, 1, 0, 0, 2, 1, 0, 2], jnp.int32)
  x = jnp.arange(8, dtype=jnp.int32)
  active = jnp.asarray([1, 1, 1, 0, 1, 1, 1, 1], bool)
  lg, cnt = jax.jit(class_sequential_apply, static_argnums=1)((log, n), step, x, y, active)
  np.testing.assert_array_equal(np.asarray(cnt), [3, 2, 2])
  np.testing.assert_array_equal(np.asarray(lg)[0, :3], [0, 2, 6])
  np.testing.assert_array_equal(np.asarray(lg)[1, :2], [1, 5])
  np.testing.assert_array_equal(np.asarray(lg)[2, :2], [4, 7])
