"""Self-supervised and metric losses of the semi-supervised baselines (CaSSLe, DualNet, CCIC), and
the augmented views they train on.

Shapes: embeddings [N, D], images [N, H, W, C], labels [N] int, row weights [N] (0 = padding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.ops import feature_aug


def two_views(key: jax.Array, x: jax.Array, scale=(0.2, 1.0)) -> tuple[jax.Array, jax.Array]:
  """Two independent random resized crops of every image x [N, H, W, C] (torchvision's
  ``RandomResizedCrop``, ``cljax.ops.feature_aug``). Flips and colour jitter are left out: on
  digits a flip makes another shape and there is no colour."""
  k1, k2 = jax.random.split(key)
  return (feature_aug.random_resized_crop(k1, x, scale=scale),
          feature_aug.random_resized_crop(k2, x, scale=scale))


def barlow_twins(z1: jax.Array, z2: jax.Array, lamb: float = 5e-3, scale: float = 0.025,
                 weight=None, eps: float = 1e-5) -> jax.Array:
  """Barlow Twins (Zbontar et al. 2021) as solo-learn / CaSSLe's ``barlow_loss_func``.

  Each embedding dimension is standardised over the batch (``BatchNorm1d(affine=False)`` in
  train mode: mean and biased variance + eps), C = z1ᵀ z2 / N, and the loss is
  ``scale · (Σ_i (1 − C_ii)² + lamb · Σ_{i≠j} C_ij²)``. ``weight`` [N] (0/1) leaves rows out.
  """
  w = jnp.ones((z1.shape[0],), jnp.float32) if weight is None else weight.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(w), 1.0)

  def standardise(z):
    z = z.astype(jnp.float32)
    mu = jnp.sum(z * w[:, None], 0) / n
    var = jnp.sum(((z - mu) ** 2) * w[:, None], 0) / n
    return (z - mu) / jnp.sqrt(var + eps) * w[:, None]

  c = jnp.dot(standardise(z1).T, standardise(z2), precision=jax.lax.Precision.HIGHEST) / n
  eye = jnp.eye(c.shape[0], dtype=bool)
  diff = (c - eye.astype(jnp.float32)) ** 2
  return scale * jnp.sum(jnp.where(eye, diff, lamb * diff))


def pairwise_sq_dist(a: jax.Array) -> jax.Array:
  """[N, N] squared Euclidean distances between the rows of a [N, D] (clipped at 0)."""
  a = a.astype(jnp.float32)
  sq = jnp.sum(a * a, 1)
  return jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * a @ a.T, 0.0)


def batch_hard_triplet(emb: jax.Array, y: jax.Array, weight: jax.Array, k: int = 1,
                       margin: float = 1.0) -> jax.Array:
  """Batch-hard triplet loss, CCIC's metric term, as mammoth ``utils/triplet.py``
  ``batch_hard_triplet_loss(..., margin_type="hard")``: squared Euclidean distances; for each
  anchor its k farthest same-label rows (itself included, distance 0) and k nearest other-label
  rows, paired by rank; mean of max(d_pos − d_neg + margin, 0) over the pairs with a negative
  (0 when there is none). Rows with weight 0 take no part."""
  d = pairwise_sq_dist(emb)
  w = weight > 0
  pair = w[:, None] & w[None, :]
  same = y[:, None] == y[None, :]
  k = min(int(k), y.shape[0])
  d_pos, _ = jax.lax.top_k(jnp.where(same & pair, d, 0.0), k)
  neg, _ = jax.lax.top_k(-jnp.where(~same & pair, d, jnp.inf), k)
  d_neg = -neg
  ok = jnp.isfinite(d_neg) & w[:, None]
  per = jnp.maximum(jnp.where(ok, d_pos - d_neg, 0.0) + margin, 0.0)
  return jnp.sum(jnp.where(ok, per, 0.0)) / jnp.maximum(jnp.sum(ok), 1.0)


def negative_only_triplet(emb: jax.Array, group: jax.Array, weight: jax.Array, k: int = 1,
                          margin: float = 1.0) -> jax.Array:
  """CCIC's push-apart term between groups (this step's unlabeled rows vs earlier steps' memory
  rows), mammoth ``negative_only_triplet_loss(..., margin_type="hard")``: each anchor's k nearest
  rows of another group (squared distances), mean of max(margin − d_neg, 0)."""
  d = pairwise_sq_dist(emb)
  w = weight > 0
  other = (group[:, None] != group[None, :]) & w[:, None] & w[None, :]
  k = min(int(k), group.shape[0])
  neg, _ = jax.lax.top_k(-jnp.where(other, d, jnp.inf), k)
  d_neg = -neg
  ok = jnp.isfinite(d_neg) & w[:, None]
  per = jnp.maximum(margin - jnp.where(ok, d_neg, margin), 0.0)
  return jnp.sum(per) / jnp.maximum(jnp.sum(ok), 1.0)


def sharpen(p: jax.Array, temperature: float = 0.5) -> jax.Array:
  """MixMatch's sharpening of probabilities p [N, K]: p^(1/T) renormalised per row."""
  q = jnp.power(jnp.maximum(p, 1e-12), 1.0 / temperature)
  return q / jnp.sum(q, axis=-1, keepdims=True)
