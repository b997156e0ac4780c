r"""Deep SLDA's float32 statistics over a long stream against a float64 computation.

    python experiments/bench/slda_float32.py --out=/tmp/slda_f32.json
    python experiments/bench/slda_float32.py --cycles=2 --dim=64        # a quick look

The stream: Fashion-MNIST's 60,000 real training images (Debian's ``dataset-fashion-mnist``;
mnist5k's 4,000 digits if it is missing), each cycle a new shuffle of all of them, ``--cycles``
cycles (17: 1,020,000 examples), as features: a fixed random ReLU projection of the pixels to
``--dim`` dimensions. Batches of ``--batch`` go through ``cljax.ops.slda.update_batch`` (float32,
the learner's kernel) for both rules:

* ``reference`` (the default rule: Hayes and Kanan's, weight n/(n+1) with the global count): the
  float64 side is an independent NumPy implementation of the same per-example rule, applied per
  batch with per-class prefix sums (checked against a plain per-example loop on the first 2,048
  examples);
* ``pooled`` (exact within-class scatter): the float64 side is the closed form, computed once
  from the 60,000 base examples (every cycle holds each once, so the stream's statistics are the
  base statistics times the cycle count; the means are the base means).

Printed: relative errors of the class means (max over classes of ||μ32 − μ64|| / ||μ64||), of the
covariance Σ = S / n (||Σ32 − Σ64||_F / ||Σ64||_F), and of the head's scores on the test set
(max |s32 − s64| / max |s64|, Λ from each side's Σ in float64), and top-1 agreement.
Target (issue 12): within 1e-4 relative.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags
import jax
import numpy as np

from cljax import data
from cljax.ops import slda as ops

_CYCLES = flags.DEFINE_integer("cycles", 17, "Shuffled passes over the 60,000 images.")
_DIM = flags.DEFINE_integer("dim", 256, "Feature dimensions (random ReLU projection).")
_BATCH = flags.DEFINE_integer("batch", 256, "Rows per update.")
_OUT = flags.DEFINE_string("out", None, "Write the figures as JSON here.")

SHRINK = 1e-4


def _features(dim: int):
  """(train features [N, dim] float32, labels [N], test features, test labels, name)."""
  try:
    ds = data.load("fashion_mnist")
  except data.DataError:
    ds = data.load("mnist5k")
  proj = np.random.default_rng(0).normal(size=(784, dim)).astype(np.float32) / 28.0

  def feats(src):
    x = src.batch(np.arange(len(src))).reshape(len(src), -1)
    return np.maximum(x @ proj, 0.0).astype(np.float32), np.asarray(src.y, np.int64)

  return (*feats(ds.train), *feats(ds.test), ds.name)


class Reference64:
  """The reference rule in float64 NumPy, batch by batch (independent of cljax.ops.slda)."""

  def __init__(self, k: int, d: int):
    self.means, self.counts = np.zeros((k, d)), np.zeros(k)
    self.scatter, self.n = np.zeros((d, d)), 0.0

  def update(self, x: np.ndarray, y: np.ndarray) -> None:
    x = x.astype(np.float64)
    k = self.means.shape[0]
    onehot = np.eye(k)[y]                                       # [B, K]
    before = np.cumsum(onehot, 0) - onehot                      # same-class rows before j
    sums = np.cumsum(onehot[:, :, None] * x[:, None, :], 0) - onehot[:, :, None] * x[:, None, :]
    r = before[np.arange(len(y)), y]                            # [B]
    p = sums[np.arange(len(y)), y]                              # [B, d]
    c = self.counts[y] + r
    mu = np.where((c > 0)[:, None], (self.counts[y, None] * self.means[y] + p)
                  / np.maximum(c, 1)[:, None], 0.0)
    z = x - mu
    n = self.n + np.arange(len(y))
    self.scatter += (z * (n / (n + 1))[:, None]).T @ z
    tot = onehot.sum(0)
    self.means = np.where((self.counts + tot > 0)[:, None],
                          (self.counts[:, None] * self.means + onehot.T @ x)
                          / np.maximum(self.counts + tot, 1)[:, None], 0.0)
    self.counts += tot
    self.n += len(y)


def _loop64(x: np.ndarray, y: np.ndarray, k: int):
  """The per-example reference rule, literally (ALGORITHMS.md §1), in float64."""
  means, counts = np.zeros((k, x.shape[1])), np.zeros(k)
  scatter, n = np.zeros((x.shape[1],) * 2), 0.0
  for xi, yi in zip(x.astype(np.float64), y):
    z = xi - means[yi]
    scatter += (n / (n + 1)) * np.outer(z, z)
    means[yi] += z / (counts[yi] + 1)
    counts[yi] += 1
    n += 1
  return means, scatter


def _scores(means, cov, x):
  lam = np.linalg.inv((1 - SHRINK) * cov + SHRINK * np.eye(cov.shape[0]))
  w = lam @ means.T
  return x.astype(np.float64) @ w - 0.5 * np.einsum("kd,dk->k", means, w)


def _errors(means32, cov32, means64, cov64, xt, yt):
  mean_err = float(np.max(np.linalg.norm(means32 - means64, axis=1)
                          / np.maximum(np.linalg.norm(means64, axis=1), 1e-30)))
  cov_err = float(np.linalg.norm(cov32 - cov64) / np.linalg.norm(cov64))
  s32, s64 = _scores(means32, cov32, xt), _scores(means64, cov64, xt)
  return {"means_rel": mean_err, "cov_rel": cov_err,
          "scores_rel": float(np.max(np.abs(s32 - s64)) / np.max(np.abs(s64))),
          "top1_agreement": float((s32.argmax(1) == s64.argmax(1)).mean()),
          "accuracy64": float((s64.argmax(1) == yt).mean())}


def main(argv):
  del argv
  x, y, xt, yt, name = _features(_DIM.value)
  k, d, b = 10, _DIM.value, _BATCH.value
  rng = np.random.default_rng(1)
  order = np.concatenate([rng.permutation(len(y)) for _ in range(_CYCLES.value)])
  n_total = len(order)  # the last batch is smaller (one more compile), so cycles stay whole
  print(f"{name}: {n_total:,} examples ({_CYCLES.value} shuffled cycles of {len(y):,}), d={d}, "
        f"batch {b}", flush=True)

  # The float64 batched reference against the literal per-example loop first.
  check = Reference64(k, d)
  for s in range(0, 2048, b):
    check.update(x[order[s:s + b]], y[order[s:s + b]])
  lm, ls = _loop64(x[order[:2048]], y[order[:2048]], k)
  assert np.allclose(check.means, lm, rtol=1e-10, atol=1e-12)
  assert np.allclose(check.scatter, ls, rtol=1e-10, atol=1e-9)

  out = {"data": name, "examples": int(n_total), "dim": d, "batch": b, "rules": {}}
  for rule in ("reference", "pooled"):
    upd = jax.jit(lambda s, xb, yb, rule=rule: ops.update_batch(s, xb, yb, rule=rule))
    state = ops.init_state(k, d)
    ref = Reference64(k, d) if rule == "reference" else None
    t0 = time.perf_counter()
    for s in range(0, n_total, b):
      idx = order[s:s + b]
      state = upd(state, x[idx], y[idx].astype(np.int32))
      if ref is not None:
        ref.update(x[idx], y[idx])
    jax.block_until_ready(state)
    wall = time.perf_counter() - t0
    means32 = np.asarray(state.means, np.float64)
    cov32 = np.asarray(state.scatter, np.float64) / int(state.cov_n)
    if ref is not None:
      means64, cov64 = ref.means, ref.scatter / ref.n
    else:  # closed form from the base examples (each appears once per cycle)
      x64 = x.astype(np.float64)
      means64 = np.stack([x64[y == c].mean(0) for c in range(k)])
      cen = x64 - means64[y]
      cov64 = cen.T @ cen / len(y)
    e = _errors(means32, cov32, means64, cov64, xt, yt)
    e["wall_s"] = wall
    out["rules"][rule] = e
    print(f"{rule:>9}: means {e['means_rel']:.2e} | covariance {e['cov_rel']:.2e} | scores "
          f"{e['scores_rel']:.2e} (relative) | top-1 agreement {e['top1_agreement']:.4f} | "
          f"accuracy {e['accuracy64']:.4f} | {wall:.0f}s", flush=True)
  out.update(jax=jax.__version__, backend=jax.default_backend(), load_avg=os.getloadavg())
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  app.run(main)
