"""Tests for cljax/ops/exstream.py: the merge rule against a NumPy loop, invariants, batching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.ops import exstream as ex

K, C, D, B = 5, 4, 6, 16  # one set of shapes, so each jitted function compiles once

_insert = jax.jit(ex.insert)


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


def _insert_stream(xs, ys, mask=None, chunk=B):
  """Feeds the stream through the jitted insert in padded chunks of ``B`` rows."""
  buf = ex.init(K, C, D)
  n = len(ys)
  mask = np.ones(n, bool) if mask is None else mask
  for s in range(0, n, chunk):
    x = np.zeros((B, D), np.float32)
    y = np.zeros(B, np.int32)
    m = np.zeros(B, bool)
    e = min(s + chunk, n)
    x[:e - s], y[:e - s], m[:e - s] = xs[s:e], ys[s:e], mask[s:e]
    buf = _insert(buf, x, y, m)
  return buf


@pytest.mark.parametrize("seed,integer", [(0, False), (1, False), (2, True)])
def test_matches_numpy_reference(seed, integer):
  xs, ys = _stream(seed, 300, integer)
  buf = _insert_stream(xs, ys)
  cents, w, n = numpy_exstream(xs, ys, K, C)
  np.testing.assert_array_equal(np.asarray(buf.counts), n)
  np.testing.assert_array_equal(np.asarray(buf.weights), w)
  np.testing.assert_allclose(np.asarray(buf.centroids), cents, rtol=1e-5, atol=1e-5)


def test_weights_sum_to_seen_and_capacity_holds():
  xs, ys = _stream(3, 208)
  buf = ex.init(K, C, D)
  for s in range(0, 208, B):
    buf = _insert(buf, xs[s:s + B], ys[s:s + B], np.ones(B, bool))
    seen = np.bincount(ys[:s + B], minlength=K)
    w = np.asarray(buf.weights)
    counts = np.asarray(buf.counts)
    np.testing.assert_array_equal(w.sum(1), seen)
    assert (counts <= C).all()
    np.testing.assert_array_equal(counts, np.minimum(seen, C))
    filled = np.arange(C)[None, :] < counts[:, None]
    assert (w[filled] >= 1).all() and (w[~filled] == 0).all()


def test_batched_equals_one_at_a_time_exactly():
  xs, ys = _stream(4, 160)
  # Single-class runs inside batches force many sequential rounds.
  ys[20:60] = 2
  one = _insert_stream(xs, ys, chunk=1)
  for chunk in (5, B):
    many = _insert_stream(xs, ys, chunk=chunk)
    for a, b in zip(one, many):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mask_skips_rows():
  xs, ys = _stream(5, 160)
  mask = np.random.default_rng(5).random(160) < 0.6
  masked = _insert_stream(xs, ys, mask)
  only = _insert_stream(xs[mask], ys[mask])
  for a, b in zip(masked, only):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  cents, w, _ = numpy_exstream(xs, ys, K, C, mask)
  np.testing.assert_array_equal(np.asarray(masked.weights), w)
  np.testing.assert_allclose(np.asarray(masked.centroids), cents, rtol=1e-5, atol=1e-5)


def test_slot_convention():
  # Class 0 holds 0, 10, 10.5, 20 (c = 4); the closest pair is slots (1, 2): the merged centroid
  # (weights 1 and 1) goes to the higher slot 2 and the new example to the lower slot 1.
  xs = np.zeros((5, D), np.float32)
  xs[:, 0] = [0.0, 10.0, 10.5, 20.0, 99.0]
  buf = _insert_stream(xs, np.zeros(5, np.int32))
  np.testing.assert_allclose(np.asarray(buf.centroids)[0, :, 0], [0.0, 99.0, 10.25, 20.0])
  np.testing.assert_array_equal(np.asarray(buf.weights)[0], [1, 1, 2, 1])


def test_closest_pair_tie_break():
  dist = jnp.asarray([[0, 1, 1, 5], [1, 0, 1, 5], [1, 1, 0, 5], [5, 5, 5, 0]], jnp.float32)
  i, j = ex.closest_pair(dist)
  assert (int(i), int(j)) == (0, 1)


def test_contents_shapes_and_mask():
  xs, ys = _stream(6, 12)
  buf = _insert_stream(xs, ys)
  x, y, w, m = ex.contents(buf)
  assert x.shape == (K * C, D) and y.shape == w.shape == m.shape == (K * C,)
  np.testing.assert_array_equal(np.asarray(y), np.repeat(np.arange(K), C))
  assert int(m.sum()) == int(buf.counts.sum())
  assert float(w.sum()) == 12.0


def test_capacity_below_two_rejected():
  with pytest.raises(ValueError):
    ex.init(3, 1, 4)


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
  lg, cnt = jax.jit(ex.class_sequential_apply, static_argnums=1)((log, n), step, x, y, active)
  np.testing.assert_array_equal(np.asarray(cnt), [3, 2, 2])
  np.testing.assert_array_equal(np.asarray(lg)[0, :3], [0, 2, 6])
  np.testing.assert_array_equal(np.asarray(lg)[1, :2], [1, 5])
  np.testing.assert_array_equal(np.asarray(lg)[2, :2], [4, 7])
