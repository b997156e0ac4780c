"""cljax/ops/herding.py against a plain per-class loop of iCaRL's Algorithm 4."""

import jax
import numpy as np

from cljax import data
from cljax.ops.herding import herding_ranks
from tests.helpers import arrays


def reference(feats, y, mask, m):
  """Rebuffi et al. 2017, Algorithm 4, one class at a time (mammoth ``fill_buffer``'s loop) on
  L2-normalised features; returns the stream rows chosen per class, in order."""
  phi = feats / np.linalg.norm(feats, axis=1, keepdims=True)
  chosen = {}
  for c in np.unique(y[mask]):
    rows = np.flatnonzero(mask & (y == c))
    mu = phi[rows].mean(0)
    picked, total = [], np.zeros_like(mu)
    for k in range(min(m, len(rows))):
      cost = np.linalg.norm(mu - (phi[rows] + total) / (k + 1), axis=1)
      cost[np.isin(rows, picked)] = np.inf
      i = rows[int(np.argmin(cost))]
      picked.append(i)
      total = total + phi[i]
    chosen[int(c)] = picked
  return chosen


def test_matches_the_per_class_loop_on_real_digits():
  x, y = arrays(data.load("digits"))
  feats = x[:300].reshape(300, -1).astype(np.float64)
  y = y[:300]
  mask = np.random.default_rng(0).random(300) < 0.9
  m = 12
  rank = np.asarray(jax.jit(herding_ranks, static_argnums=4)(feats, y, mask, m, 10))
  want = reference(feats, y, mask, m)
  for c, rows in want.items():
    got = np.flatnonzero((y == c) & (rank < 300))
    np.testing.assert_array_equal(got[np.argsort(rank[got])], rows)
  assert (rank[~mask] == 300).all()
  # The herded mean approaches the class mean faster than the first m rows of the class do.
  phi = feats / np.linalg.norm(feats, axis=1, keepdims=True)
  c = 3
  rows = np.flatnonzero(mask & (y == c))
  herd = phi[want[c]].mean(0)
  assert np.linalg.norm(herd - phi[rows].mean(0)) < np.linalg.norm(phi[rows[:m]].mean(0) -
                                                                  phi[rows].mean(0))


def test_traced_m_and_small_classes():
  x, y = arrays(data.load("digits"))
  feats, y = x[:40].reshape(40, -1), y[:40]
  f = jax.jit(lambda m: herding_ranks(feats, y, np.ones(40, bool), m, 10))
  r_big = np.asarray(f(100))  # more than any class holds: every row, ranks 0..n_c-1
  for c in range(10):
    np.testing.assert_array_equal(np.sort(r_big[y == c]), np.arange((y == c).sum()))
  r2 = np.asarray(f(2))
  assert ((r2 < 40).sum() == 2 * 10) and f._cache_size() == 1  # pylint: disable=protected-access
