"""Tests for cljax.ops.pq: codes are the brute-force nearest centroids, k-means behaves, sizes add up."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.ops import pq


def _data(n=2000, d=32, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, d), jnp.float32)


def test_train_shapes_and_dtype():
  cb = pq.train(jax.random.key(1), _data(), num_subvectors=4, num_centroids=16, iters=5)
  assert cb.shape == (4, 16, 8) and cb.dtype == jnp.float32
  assert np.isfinite(np.asarray(cb)).all()


def test_codes_equal_brute_force_nearest_centroid():
  x = _data(1500, 32, seed=2)
  cb = pq.train(jax.random.key(3), x, num_subvectors=4, num_centroids=32, iters=5)
  codes = np.asarray(pq.encode(cb, x))
  assert codes.dtype == np.uint8 and codes.shape == (1500, 4)
  xs = np.asarray(x, np.float64).reshape(-1, 4, 8)
  dist = ((xs[:, :, None, :] - np.asarray(cb, np.float64)[None]) ** 2).sum(-1)  # [N, M, C]
  brute = dist.argmin(-1)
  # Exact ties are measure-zero for Gaussian data; rounding may only flip near-ties.
  srt = np.sort(dist, axis=-1)
  clear = (srt[..., 1] - srt[..., 0]) > 1e-4
  np.testing.assert_array_equal(codes[clear], brute[clear])
  chosen = np.take_along_axis(dist, codes[..., None].astype(np.int64), -1)[..., 0]
  np.testing.assert_allclose(chosen, srt[..., 0], rtol=1e-4, atol=1e-5)


def test_encode_row_batches_match_single_block():
  x = _data(1000, 32, seed=4)
  cb = pq.train(jax.random.key(5), x, num_subvectors=8, num_centroids=8, iters=3)
  np.testing.assert_array_equal(pq.encode(cb, x, batch_size=128), pq.encode(cb, x, batch_size=None))


def test_decode_returns_the_coded_centroids():
  cb = jax.random.normal(jax.random.key(6), (4, 8, 3))
  codes = jnp.array([[0, 7, 3, 1], [5, 5, 5, 5]], jnp.uint8)
  out = np.asarray(pq.decode(cb, codes))
  want = np.stack([np.concatenate([np.asarray(cb)[m, int(c)] for m, c in enumerate(row)])
                   for row in np.asarray(codes)])
  np.testing.assert_array_equal(out, want)
  # Decoding a centroid and encoding it again gives the same code.
  np.testing.assert_array_equal(pq.encode(cb, out), codes)


@pytest.mark.slow  # several seconds: the full suite runs it
def test_reconstruction_error_falls_as_centroids_grow():
  x = _data(3000, 32, seed=7)
  mses = [float(pq.reconstruction_mse(pq.train(jax.random.key(8), x, 4, c, iters=8), x))
          for c in (2, 8, 32, 128)]
  assert all(a > b for a, b in zip(mses, mses[1:])), mses
  assert mses[0] < 1.0  # better than coding every vector as zero (unit-variance data)


def test_exact_recovery_when_each_subspace_has_c_distinct_points():
  # With many repeats of C distinct points, the random initial centroids coincide; empty clusters
  # must be re-seeded onto the points not yet covered until every point is its own centroid.
  rng = np.random.default_rng(0)
  m, c, ds = 2, 8, 4
  centres = rng.normal(size=(m, c, ds)) * 10
  labels = rng.integers(0, c, size=(400, m))
  x = jnp.asarray(centres[np.arange(m)[None], labels].reshape(400, m * ds), jnp.float32)
  cb = pq.train(jax.random.key(0), x, m, c, iters=20)
  assert float(pq.reconstruction_mse(cb, x)) < 1e-8


def test_empty_clusters_reseeded_on_relu_like_data():
  # Most sub-vectors are exactly zero, so initial centroids collide; no centroid may stay a duplicate.
  x = jnp.maximum(_data(2000, 16, seed=9) - 1.0, 0.0)
  cb = np.asarray(pq.train(jax.random.key(1), x, 2, 32, iters=10))
  for m in range(2):
    assert len(np.unique(cb[m], axis=0)) == 32


def test_subsample_cap_and_jit():
  x = _data(4000, 16, seed=10)
  cb = pq.train(jax.random.key(0), x, 2, 4, iters=3, max_points_per_centroid=39)
  assert cb.shape == (2, 4, 8)
  enc = jax.jit(pq.encode)
  dec = jax.jit(pq.decode)
  assert dec(cb, enc(cb, x)).shape == x.shape


def test_train_is_deterministic_given_key():
  x = _data(500, 8, seed=11)
  a = pq.train(jax.random.key(4), x, 2, 8, iters=4)
  b = pq.train(jax.random.key(4), x, 2, 8, iters=4)
  np.testing.assert_array_equal(a, b)


def test_shape_validation_errors():
  x = _data(300, 30)
  with pytest.raises(ValueError, match="divisible"):
    pq.train(jax.random.key(0), x, 4, 8)
  with pytest.raises(ValueError, match="256"):
    pq.train(jax.random.key(0), x, 3, 257)
  with pytest.raises(ValueError, match="at least"):
    pq.train(jax.random.key(0), x[:5], 3, 8)
  cb = jnp.zeros((4, 8, 2))
  with pytest.raises(ValueError):
    pq.encode(cb, jnp.zeros((3, 12)))
  with pytest.raises(ValueError):
    pq.decode(cb, jnp.zeros((3, 5), jnp.uint8))


def test_memory_accounting_matches_remind_imagenet_figures():
  mem = pq.memory_bytes(1, 32, 256, 512, vectors_per_item=49)
  assert mem == {"codes": 1568, "codebook": 32 * 256 * 16 * 4, "total": 1568 + 524288}
  assert pq.memory_bytes(10, 4, 16, 8)["codes"] == 40
  # The paper's ImageNet buffer: the bytes of 10,000 raw 224x224x3 images, minus the codebook.
  assert pq.capacity_for_bytes(10000 * 224 * 224 * 3, 32, 256, 512, vectors_per_item=49) == 959665


def test_subspace_batching_does_not_change_the_result():
  x = _data(600, 16, seed=12)
  one = pq.train(jax.random.key(2), x, 4, 8, iters=4, subspace_batch=1)
  all_at_once = pq.train(jax.random.key(2), x, 4, 8, iters=4, subspace_batch=4)
  np.testing.assert_allclose(one, all_at_once, rtol=1e-5, atol=1e-6)
