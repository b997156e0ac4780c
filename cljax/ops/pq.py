"""Product quantization (Jégou et al. 2011) in JAX: k-means codebooks, encode, decode.

A d-dimensional vector is cut into M sub-vectors of ds = d / M dimensions; each sub-vector is
replaced by the index of its nearest centroid in that sub-space's codebook of C centroids. With
C <= 256 a code is one uint8 per sub-vector, so a vector costs M bytes.

A codebook is a float32 array [M, C, ds]. REMIND (ALGORITHMS.md §2) quantizes every spatial
position of ResNet-18's layer4.0 output: d = 512, M = 32, C = 256, ds = 16, 7 x 7 x 32 = 1,568 bytes
per image.

Everything here is a pure function and jittable; ``train`` takes its sizes as static arguments.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Bound on the [batch, n, C] float32 distance block k-means holds per chunk of sub-spaces.
_TRAIN_BLOCK_BYTES = 1 << 28


def check_shapes(d: int, num_subvectors: int, num_centroids: int) -> int:
  """Validates a PQ configuration and returns the sub-vector size ds = d / M.

  Raises:
    ValueError: when M does not divide d, or C is outside [1, 256] (codes are uint8).
  """
  if num_subvectors <= 0 or d % num_subvectors:
    raise ValueError(
        f"dimension d={d} must be divisible by num_subvectors M={num_subvectors} (> 0)")
  if not 1 <= num_centroids <= 256:
    raise ValueError(f"num_centroids C={num_centroids} must be in [1, 256] to fit a uint8 code")
  return d // num_subvectors


def _assign(x, x_sq, centroids):
  """Nearest centroid of each row. x [n, ds], x_sq [n], centroids [C, ds] -> ([n] int32, [n])."""
  c_sq = jnp.sum(centroids * centroids, axis=-1)
  # Squared distances by the expansion |x|^2 - 2 x.c + |c|^2 (one matmul, as faiss does);
  # clipped at 0 because rounding can make the expansion slightly negative.
  dist = x_sq[:, None] - 2.0 * (x @ centroids.T) + c_sq[None, :]
  assign = jnp.argmin(dist, axis=-1).astype(jnp.int32)
  mind = jnp.maximum(jnp.take_along_axis(dist, assign[:, None], axis=-1)[:, 0], 0.0)
  return assign, mind


def _kmeans(key, x, num_centroids: int, iters: int):
  """Lloyd's k-means on one sub-space. x [n, ds] float32 -> centroids [C, ds].

  Initial centroids are C distinct random rows of x. A cluster left empty after an assignment is
  re-seeded with a training point drawn with probability proportional to its squared distance to
  its current centroid (k-means++ style D^2 sampling), so duplicates of existing centroids (common
  with ReLU features: many all-zero sub-vectors) are never picked; when every point sits exactly on
  a centroid, the empty cluster keeps its old centroid.
  """
  n = x.shape[0]
  k_init, k_loop = jax.random.split(key)
  centroids = x[jax.random.choice(k_init, n, (num_centroids,), replace=False)]
  x_sq = jnp.sum(x * x, axis=-1)

  def step(c, it):
    assign, mind = _assign(x, x_sq, c)
    sums = jax.ops.segment_sum(x, assign, num_segments=num_centroids)
    counts = jax.ops.segment_sum(jnp.ones((n,), x.dtype), assign, num_segments=num_centroids)
    mean = sums / jnp.maximum(counts, 1.0)[:, None]
    empty = counts == 0
    cdf = jnp.cumsum(mind)
    total = cdf[-1]
    u = jax.random.uniform(jax.random.fold_in(k_loop, it), (num_centroids,)) * total
    pick = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, n - 1)
    reseed = jnp.where(total > 0, x[pick], c)
    return jnp.where(empty[:, None], reseed, mean), None

  centroids, _ = jax.lax.scan(step, centroids, jnp.arange(iters))
  return centroids


@functools.partial(
    jax.jit,
    static_argnames=("num_subvectors", "num_centroids", "iters", "max_points_per_centroid",
                     "subspace_batch"))
def train(key: jax.Array,
          x: jax.Array,
          num_subvectors: int,
          num_centroids: int,
          iters: int = 25,
          max_points_per_centroid: int | None = 256,
          subspace_batch: int | None = None) -> jax.Array:
  """Trains a product quantizer: one k-means per sub-space, a fixed number of Lloyd iterations.

  Like faiss, at most ``C * max_points_per_centroid`` training rows are used (a uniform random
  subset without replacement, shared by all sub-spaces); each sub-space draws its own initial
  centroids (C distinct random rows) from its own key.

  Args:
    key: PRNG key.
    x: [N, d] float training vectors; N >= C.
    num_subvectors: M, must divide d.
    num_centroids: C in [1, 256].
    iters: Lloyd iterations (faiss default 25).
    max_points_per_centroid: subsample cap per centroid (faiss default 256); None for no cap.
    subspace_batch: how many sub-spaces k-means runs on at once (vmap inside lax.map); default: 1
      on CPU (fastest there), otherwise as many as keep the distance block under 256 MiB.

  Returns:
    codebook [M, C, d / M] float32.
  """
  n, d = x.shape
  ds = check_shapes(d, num_subvectors, num_centroids)
  if n < num_centroids:
    raise ValueError(f"need at least num_centroids={num_centroids} training vectors, got {n}")
  x = x.astype(jnp.float32)
  k_sub, k_init = jax.random.split(key)
  n_train = n if max_points_per_centroid is None else min(n, num_centroids * max_points_per_centroid)
  if n_train < n:
    x = x[jax.random.choice(k_sub, n, (n_train,), replace=False)]
  xs = x.reshape(n_train, num_subvectors, ds).transpose(1, 0, 2)  # [M, n, ds]
  keys = jax.random.split(k_init, num_subvectors)
  if subspace_batch is None:
    if jax.default_backend() == "cpu":
      # Measured here (50k x 512, M = 32, C = 256): one sub-space at a time is ~1.6x faster on
      # CPU than vmapping 4 or all of them (the distance blocks then stay in cache).
      subspace_batch = 1
    else:
      subspace_batch = max(1, min(num_subvectors,
                                  _TRAIN_BLOCK_BYTES // (4 * n_train * num_centroids)))
  return jax.lax.map(lambda a: _kmeans(a[0], a[1], num_centroids, iters), (keys, xs),
                     batch_size=subspace_batch)


def _encode(codebook, x):
  n = x.shape[0]
  m, _, ds = codebook.shape
  # Sub-space axis leading: XLA:CPU runs the batched matmul about 4x faster this way round.
  xs = x.astype(jnp.float32).reshape(n, m, ds).transpose(1, 0, 2)  # [M, N, ds]
  c_sq = jnp.sum(codebook * codebook, axis=-1)  # [M, C]
  # |x|^2 is the same for every centroid of a sub-space, so it drops out of the argmin.
  dist = c_sq[:, None, :] - 2.0 * jnp.einsum("mnd,mcd->mnc", xs, codebook)
  return jnp.argmin(dist, axis=-1).T.astype(jnp.uint8)


def encode(codebook: jax.Array, x: jax.Array, batch_size: int | None = 4096) -> jax.Array:
  """Nearest-centroid codes. codebook [M, C, ds], x [N, M * ds] -> uint8 [N, M].

  Rows are processed ``batch_size`` at a time (lax.map) so the [N, M, C] distance block stays
  bounded; None processes all rows at once.
  """
  n, d = x.shape
  m, c, ds = codebook.shape
  check_shapes(d, m, c)
  if d != m * ds:
    raise ValueError(f"x has {d} dims but the codebook covers {m} x {ds} = {m * ds}")
  if batch_size is None or n <= batch_size:
    return _encode(codebook, x)
  return jax.lax.map(lambda row: _encode(codebook, row[None])[0], x, batch_size=batch_size)


def decode(codebook: jax.Array, codes: jax.Array) -> jax.Array:
  """Reconstruction from codes. codebook [M, C, ds], codes [N, M] (any int dtype) -> [N, M * ds]."""
  n, m = codes.shape
  if m != codebook.shape[0]:
    raise ValueError(f"codes have {m} sub-vectors but the codebook has {codebook.shape[0]}")
  parts = codebook[jnp.arange(m)[None, :], codes.astype(jnp.int32)]  # [N, M, ds]
  return parts.reshape(n, m * codebook.shape[2])


def reconstruction_mse(codebook: jax.Array, x: jax.Array) -> jax.Array:
  """Mean squared reconstruction error per dimension of x [N, d] after encode then decode."""
  return jnp.mean((decode(codebook, encode(codebook, x)) - x) ** 2)


def memory_bytes(num_items: int,
                 num_subvectors: int,
                 num_centroids: int,
                 d: int,
                 vectors_per_item: int = 1,
                 codebook_itemsize: int = 4) -> dict:
  """Storage of ``num_items`` items of ``vectors_per_item`` d-dim vectors each, as PQ codes.

  Returns a dict of ints: ``codes`` (num_items * vectors_per_item * M bytes, one uint8 per
  sub-vector), ``codebook`` (M * C * ds * codebook_itemsize bytes) and ``total``. Labels and
  buffer bookkeeping are not counted (the REMIND paper does not count them either).
  """
  ds = check_shapes(d, num_subvectors, num_centroids)
  codes = num_items * vectors_per_item * num_subvectors
  codebook = num_subvectors * num_centroids * ds * codebook_itemsize
  return {"codes": codes, "codebook": codebook, "total": codes + codebook}


def capacity_for_bytes(budget_bytes: int,
                       num_subvectors: int,
                       num_centroids: int,
                       d: int,
                       vectors_per_item: int = 1,
                       codebook_itemsize: int = 4) -> int:
  """How many items fit in ``budget_bytes`` once the codebook is paid for (REMIND's rule).

  REMIND's ImageNet buffer: the bytes of 10,000 raw 224x224x3 uint8 images, 49 vectors per item,
  d = 512, M = 32, C = 256 gives 959,665 items.
  """
  mem = memory_bytes(1, num_subvectors, num_centroids, d, vectors_per_item, codebook_itemsize)
  return max(0, (budget_bytes - mem["codebook"]) // mem["codes"])
