"""Tests for cljax/ops/buffers/hpstream.py: per-class HPStream (Aggarwal et al., VLDB 2004) against
a plain NumPy version of its online step written from the paper's Fig. 2 (fading cluster
structure, projected dimensions of the cluster with the point added, Manhattan segmental
distance, limiting radius, replacing the least recently updated cluster) with the module's
documented choices (singleton radius, no per-dimension normalisation)."""

import numpy as np
import pytest

from cljax.ops.buffers import hpstream
from tests.ops.buffers import common

NAME, K, C, D, L = "hpstream", 3, 4, 6, 3
CAP = K * C


class NumpyHPStream:
  """One class's HPStream, one point at a time, float64."""

  def __init__(self, c, l, half_life, tau):
    self.c, self.l, self.lam, self.tau = c, l, 1.0 / half_life, tau
    self.clusters = []  # dicts: fc1, fc2, w, last, n
    self.now = 0

  def _spread(self, fc1, fc2, w):
    return np.sqrt(np.maximum(fc2 / w - (fc1 / w) ** 2, 0.0))

  def _dims(self, spread):
    return np.argsort(spread, kind="stable")[:self.l]

  def insert(self, x):
    t = float(self.now)
    self.now += 1
    if len(self.clusters) < self.c:
      self.clusters.append(dict(fc1=x.copy(), fc2=x * x, w=1.0, last=t, n=1.0))
      return
    dims, seg = [], []
    for cl in self.clusters:
      f = 2.0 ** (-self.lam * (t - cl["last"]))
      b = self._dims(self._spread(cl["fc1"] * f + x, cl["fc2"] * f + x * x, cl["w"] * f + 1))
      cen = cl["fc1"] / cl["w"]
      dims.append(b)
      seg.append(np.abs(x[b] - cen[b]).mean())
    r = int(np.argmin(seg))
    best, b = self.clusters[r], dims[r]
    if best["n"] == 1:
      cen = best["fc1"] / best["w"]
      limit = min(np.abs(o["fc1"][b] / o["w"] - cen[b]).mean()
                  for i, o in enumerate(self.clusters) if i != r)
    else:
      spread = self._spread(best["fc1"], best["fc2"], best["w"])
      limit = self.tau * np.sqrt(np.mean(spread[b] ** 2))
    if seg[r] <= limit:
      f = 2.0 ** (-self.lam * (t - best["last"]))
      best.update(fc1=best["fc1"] * f + x, fc2=best["fc2"] * f + x * x, w=best["w"] * f + 1,
                  last=t, n=best["n"] + 1)
    else:
      old = int(np.argmin([cl["last"] for cl in self.clusters]))
      self.clusters[old] = dict(fc1=x.copy(), fc2=x * x, w=1.0, last=t, n=1.0)


def _stream(seed, n):
  rng = np.random.default_rng(seed)
  ys = rng.integers(0, K, n).astype(np.int32)
  centres = rng.normal(size=(K, 5, D)) * 2.0
  scale = np.where(rng.random((K, 5, D)) < 0.5, 0.05, 0.6)  # projected clusters: tight in some dims
  k = rng.integers(0, 5, n)
  xs = centres[ys, k] + scale[ys, k] * rng.normal(size=(n, D))
  return xs.astype(np.float32), ys


@pytest.mark.parametrize("half_life", [1000.0, 3.0])  # 3: strong fading
def test_matches_numpy_hpstream(half_life):
  xs, ys = _stream(0, 150)
  mask = np.random.default_rng(1).random(150) < 0.85
  state = common.run(NAME, CAP, K, xs[mask], ys[mask], projected_dims=L, half_life=half_life)
  per = [NumpyHPStream(C, L, half_life, 2.0) for _ in range(K)]
  for x, y in zip(xs[mask].astype(np.float64), ys[mask]):
    per[y].insert(x)
  replaced = 0
  for k in range(K):
    cl = per[k].clusters
    np.testing.assert_array_equal(state.n[k], [q["n"] for q in cl])
    np.testing.assert_array_equal(state.last[k], [q["last"] for q in cl])
    np.testing.assert_allclose(state.w[k], [q["w"] for q in cl], rtol=1e-4)
    np.testing.assert_allclose(state.fc1[k], [q["fc1"] for q in cl], rtol=1e-4, atol=1e-4)
    replaced += np.bincount(ys[mask], minlength=K)[k] - int(np.asarray(state.n[k]).sum())
  assert replaced > 0  # some clusters were deleted (the rule's fourth branch ran)
  assert int(np.asarray(state.n).max()) > 2  # and points were absorbed


@pytest.mark.slow  # many insert shapes to compile (~10-15 s)
def test_batching_masks_and_protocol():
  """The same stream in batches of 1, 7 or 64, or with masked rows left out, gives the same
  clusters: the same decisions (counts, last updates, points per cluster) and the same sums up
  to float32 rounding. (Not bit for bit as the other policies: XLA vectorises exp2 and fuses
  multiply-adds differently in the per-class step's vmapped widths.)"""
  xs, ys = _stream(2, 90)
  mask = np.random.default_rng(3).random(90) < 0.8
  ref = common.run(NAME, CAP, K, xs, ys, mask, batch=1)
  for other in (common.run(NAME, CAP, K, xs, ys, mask, batch=7),
                common.run(NAME, CAP, K, xs, ys, mask, batch=64),
                common.run(NAME, CAP, K, xs[mask], ys[mask], batch=64)):
    for name in ("n", "last", "counts", "time"):
      np.testing.assert_array_equal(getattr(other, name), getattr(ref, name), err_msg=name)
    for name in ("fc1", "fc2", "w"):
      np.testing.assert_allclose(getattr(other, name), getattr(ref, name), rtol=1e-5, atol=1e-5)
  state = common.run(NAME, CAP, K, xs, ys)
  assert int(state.dims) == D // 2  # the default l
  c = common.check_pieces(NAME, state, CAP, K, xs[0])
  np.testing.assert_array_equal(c.weight, np.asarray(state.n).reshape(-1))
  common.check_no_recompiles(NAME, CAP, K, xs, ys)
  with pytest.raises(ValueError, match="projected_dims"):
    hpstream.init(common.KEY, CAP, np.zeros(D, np.float32), K, projected_dims=D + 1)
