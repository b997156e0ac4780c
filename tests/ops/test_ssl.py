"""cljax/ops/ssl.py against hand-written versions of the reference code's losses."""

import numpy as np

from cljax.ops import ssl


def test_barlow_twins_is_solo_learn_formula():
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(32, 6)), rng.normal(size=(32, 6))
  z2[:, 0] = z1[:, 0] * 2 + 1  # one perfectly correlated pair
  lamb, scale = 5e-3, 0.1
  # solo-learn barlow_loss_func: BatchNorm1d(affine=False) (biased variance, eps 1e-5), then
  # corr = z1^T z2 / N, (corr - I)^2 with the off-diagonal scaled by lamb, times scale_loss.
  bn = lambda z: (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)  # noqa: E731
  c = bn(z1).T @ bn(z2) / 32
  cdif = (c - np.eye(6)) ** 2
  cdif[~np.eye(6, dtype=bool)] *= lamb
  np.testing.assert_allclose(float(ssl.barlow_twins(z1, z2, lamb, scale)), scale * cdif.sum(),
                             rtol=1e-5)
  # Padding rows (weight 0) change nothing.
  pad = np.concatenate([z1, 9 + rng.normal(size=(5, 6))]), np.concatenate([z2, np.zeros((5, 6))])
  w = np.r_[np.ones(32), np.zeros(5)]
  np.testing.assert_allclose(float(ssl.barlow_twins(*pad, lamb, scale, weight=w)),
                             scale * cdif.sum(), rtol=1e-5)


def _mammoth_batch_hard(labels, emb, k, margin):
  d = ((emb[None] - emb[:, None]) ** 2).sum(2)
  same = (labels[None] == labels[:, None])
  pos = np.sort(same * d, 1)[:, ::-1][:, :k]
  neg_d = np.where(same, np.inf, d)
  neg = np.sort(neg_d, 1)[:, :k]
  m = neg != np.inf
  return np.clip(pos[m] - neg[m] + margin, 0, None).mean()


def test_triplets_match_mammoth():
  rng = np.random.default_rng(1)
  emb = rng.normal(size=(20, 4))
  y = rng.integers(0, 3, 20)
  w = np.ones(20)
  for k in (1, 2):
    np.testing.assert_allclose(float(ssl.batch_hard_triplet(emb, y, w, k, 1.0)),
                               _mammoth_batch_hard(y, emb, k, 1.0), rtol=1e-5)
  g = (np.arange(20) >= 12).astype(int)
  d = ((emb[None] - emb[:, None]) ** 2).sum(2)
  neg = np.sort(np.where(g[None] == g[:, None], np.inf, d), 1)[:, :2]
  want = np.clip(1.0 - neg, 0, None).mean()
  np.testing.assert_allclose(float(ssl.negative_only_triplet(emb, g, w, 2, 1.0)), want, rtol=1e-5)


def test_sharpen_and_views():
  p = np.array([[0.6, 0.3, 0.1]])
  q = p ** 2 / (p ** 2).sum()
  np.testing.assert_allclose(np.asarray(ssl.sharpen(p, 0.5)), q, rtol=1e-6)
  import jax  # pylint: disable=import-outside-toplevel
  x = np.random.default_rng(2).random((3, 8, 8, 1)).astype(np.float32)
  a, b = ssl.two_views(jax.random.key(0), x)
  assert a.shape == b.shape == x.shape and not np.allclose(np.asarray(a), np.asarray(b))
  a, b = ssl.two_views(jax.random.key(0), x, scale=(1.0, 1.0))  # whole-image crops: unchanged
  np.testing.assert_allclose(np.asarray(a), x, atol=1e-6)
