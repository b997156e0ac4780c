"""Tests for cljax/ops/buffers/clustream.py: per-class CluStream micro-clusters against a plain
NumPy port of MOA's ``Clustream.trainOnInstanceImpl`` (Waikato/moa
moa/clusterers/clustream/Clustream.java, steps 1-3.2, and ClustreamKernel.java: getRadius,
getDeviation, getRelevanceStamp), one class-local CluStream per class."""

import numpy as np
import pytest
from scipy.special import erfinv

from cljax.ops.buffers import clustream
from tests.ops.buffers import common

NAME, K, C, D = "clustream", 3, 4, 5
CAP = K * C


class MoaClustream:
  """One class's CluStream, as MOA writes it (initial kernels keep their own arrival times)."""

  def __init__(self, m, t=2.0, horizon=1000.0):
    self.m, self.t, self.h = m, t, horizon
    self.kernels = []  # dicts: LS, SS, N, LST, SST
    self.timestamp = -1

  @staticmethod
  def _new(x, ts):
    return dict(LS=x.astype(np.float64).copy(), SS=x.astype(np.float64) ** 2, N=1.0,
                LST=float(ts), SST=float(ts) ** 2)

  def _centre(self, k):
    return k["LS"] / k["N"]

  def _radius(self, k):
    if k["N"] == 1:
      return 0.0
    var = np.maximum(k["SS"] / k["N"] - (k["LS"] / k["N"]) ** 2, 0.0)
    return np.mean(np.sqrt(var)) * self.t

  def _relevance(self, k):
    mu = k["LST"] / k["N"]
    if k["N"] < 2 * self.m:
      return mu
    sigma = np.sqrt(max(k["SST"] / k["N"] - mu * mu, 0.0))
    return mu + sigma * np.sqrt(2) * erfinv(2 * (self.m / (2 * k["N"])) - 1)

  def insert(self, x):
    self.timestamp += 1
    if len(self.kernels) < self.m:  # 0. the first m points are the initial kernels
      self.kernels.append(self._new(x, self.timestamp))
      return
    dist = [np.linalg.norm(x - self._centre(k)) for k in self.kernels]  # 1. closest kernel
    best = int(np.argmin(dist))
    closest = self.kernels[best]
    if closest["N"] == 1:  # 2. its radius; a single point: distance to the next closest
      radius = min(np.linalg.norm(self._centre(k) - self._centre(closest))
                   for i, k in enumerate(self.kernels) if i != best)
    else:
      radius = self._radius(closest)
    if dist[best] < radius:
      closest["LS"] += x
      closest["SS"] += x ** 2
      closest["N"] += 1
      closest["LST"] += self.timestamp
      closest["SST"] += self.timestamp ** 2
      return
    threshold = self.timestamp - self.h  # 3.1 forget an old kernel
    for i, k in enumerate(self.kernels):
      if self._relevance(k) < threshold:
        self.kernels[i] = self._new(x, self.timestamp)
        return
    a, b, best_d = 0, 0, np.inf  # 3.2 merge the closest two
    for i in range(self.m):
      for j in range(i + 1, self.m):
        d = np.linalg.norm(self._centre(self.kernels[i]) - self._centre(self.kernels[j]))
        if d < best_d:
          a, b, best_d = i, j, d
    for f in ("LS", "SS", "N", "LST", "SST"):
      self.kernels[a][f] = self.kernels[a][f] + self.kernels[b][f]
    self.kernels[b] = self._new(x, self.timestamp)


def reference(xs, ys, horizon=1000.0):
  per = [MoaClustream(C, horizon=horizon) for _ in range(K)]
  for x, y in zip(xs.astype(np.float64), ys):
    per[y].insert(x)
  return per


def _clustered_stream(seed, n):
  """Points around a few well separated centres per class, so absorbs, merges and new
  micro-clusters all happen."""
  rng = np.random.default_rng(seed)
  ys = rng.integers(0, K, n).astype(np.int32)
  centres = rng.normal(size=(K, 6, D)) * 3.0
  xs = centres[ys, rng.integers(0, 6, n)] + 0.3 * rng.normal(size=(n, D))
  return xs.astype(np.float32), ys


@pytest.mark.parametrize("horizon", [1000.0, 15.0])  # 15: old micro-clusters are forgotten
def test_matches_moa_port(horizon):
  xs, ys = _clustered_stream(0, 150)
  mask = np.random.default_rng(1).random(150) < 0.85
  state = common.run(NAME, CAP, K, xs[mask], ys[mask], horizon=horizon)
  ref = reference(xs[mask], ys[mask], horizon)
  for k in range(K):
    kern = ref[k].kernels
    assert int(state.counts[k]) == len(kern) == C
    np.testing.assert_array_equal(state.n[k], [q["N"] for q in kern])
    np.testing.assert_allclose(state.ls[k], [q["LS"] for q in kern], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state.lst[k], [q["LST"] for q in kern], rtol=1e-6)
  assert int(np.asarray(state.time).sum()) == mask.sum()
  if horizon == 1000.0:  # nothing forgotten: every example is in some micro-cluster
    np.testing.assert_array_equal(np.asarray(state.n).sum(1), np.bincount(ys[mask], minlength=K))


@pytest.mark.slow  # many insert shapes to compile (~10-15 s)
def test_batching_masks_and_protocol():
  xs, ys = _clustered_stream(2, 90)
  mask = np.random.default_rng(3).random(90) < 0.8
  common.check_batching_and_masks(NAME, CAP, K, xs, ys, mask)
  state = common.run(NAME, CAP, K, xs, ys)
  c = common.check_pieces(NAME, state, CAP, K, xs[0])
  centres = (np.asarray(state.ls) / np.asarray(state.n)[..., None]).reshape(-1, D)
  np.testing.assert_allclose(np.asarray(c.x), centres, rtol=1e-6)  # all filled: 90 > K * C
  np.testing.assert_array_equal(c.weight, np.asarray(state.n).reshape(-1))
  common.check_no_recompiles(NAME, CAP, K, xs, ys)
  with pytest.raises(ValueError, match="at least 2"):
    clustream.init(common.KEY, K, np.zeros(D, np.float32), K)
