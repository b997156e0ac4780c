"""Tests for cljax/ops/slda.py: streaming LDA statistics against float64 NumPy and scikit-learn."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.covariance import OAS
from sklearn.datasets import load_digits
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from cljax.ops import slda as ops

K, D, B = 40, 12, 32

update_batch = jax.jit(ops.update_batch, static_argnames=("rule", "plastic"))
update_scan = jax.jit(ops.update_scan, static_argnames=("rule", "plastic"))
scores = jax.jit(ops.scores, static_argnames=("shrinkage", "solver", "mask_unseen"))
merge = jax.jit(ops.merge)


def _stream(seed: int, n: int, order: str, k: int = K, d: int = D):
  """n examples of k classes with distinct means, ~15 % of rows masked out."""
  rng = np.random.default_rng(seed)
  centres = 3.0 * rng.normal(size=(k, d))
  y = rng.integers(0, k, n).astype(np.int32)
  if order == "class_contiguous":
    y = np.sort(y)  # whole batches of one class, and class boundaries inside batches
  x = (centres[y] + rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d)).astype(np.float32)
  mask = rng.random(n) > 0.15
  return x, y, mask


def _numpy_sequential(x, y, mask, k, rule, plastic=True, init=None):
  """The reference per-example update, literally, in float64 (Σ stored, not the scatter)."""
  if init is None:
    means, counts, sigma, n = np.zeros((k, x.shape[1])), np.zeros(k), np.zeros((x.shape[1],) * 2), 0
  else:
    means, counts, sigma, n = (np.array(a, np.float64) for a in init)
  for xi, yi, mi in zip(x.astype(np.float64), y, mask):
    if not mi:
      continue
    z = xi - means[yi]
    if plastic:
      if rule == "reference":
        sigma = (n * sigma + (n / (n + 1)) * np.outer(z, z)) / (n + 1)
      else:  # Welford on the pooled within-class scatter, normalised by n
        sigma = (n * sigma + (counts[yi] / (counts[yi] + 1)) * np.outer(z, z)) / (n + 1)
    means[yi] += z / (counts[yi] + 1)
    counts[yi] += 1
    n += 1
  return means, counts, sigma, n


def _run(fn, x, y, mask, k=K, batch=B, state=None, **kw):
  state = ops.init_state(k, x.shape[1]) if state is None else state
  for i in range(0, len(y), batch):
    state = fn(state, x[i:i + batch], y[i:i + batch], mask[i:i + batch], **kw)
  return state


def _assert_rel(actual, expected, rel=1e-5):
  """Entrywise, relative to the largest entry of ``expected``."""
  expected = np.asarray(expected, np.float64)
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rel,
                             atol=rel * np.abs(expected).max())


def _pooled_numpy(x, y, mask, k):
  x, y = x[mask].astype(np.float64), y[mask]
  counts = np.bincount(y, minlength=k)
  means = np.zeros((k, x.shape[1]))
  for c in range(k):
    if counts[c]:
      means[c] = x[y == c].mean(0)
  r = x - means[y]
  return means, counts, r.T @ r


@pytest.mark.parametrize("order", ["class_contiguous", "shuffled"])
@pytest.mark.parametrize("rule", ["reference", "pooled"])
def test_batched_and_scan_equal_numpy_sequential(order, rule):
  x, y, mask = _stream(0, 600, order)
  means, counts, sigma, n = _numpy_sequential(x, y, mask, K, rule)
  # The streams must exercise what the batched form has to get right.
  per_batch = [np.bincount(y[i:i + B][mask[i:i + B]], minlength=K).max() for i in range(0, 600, B)]
  assert max(per_batch) >= 3
  for fn in (update_batch, update_scan):
    st = _run(fn, x, y, mask, rule=rule)
    assert int(st.n) == n == mask.sum()
    np.testing.assert_array_equal(np.asarray(st.counts), counts)
    _assert_rel(st.means, means)
    _assert_rel(ops.covariance(st), sigma)
    assert bool(st.stale)


def test_batched_equals_numpy_after_base_init_fixed_and_plastic():
  x, y, mask = _stream(1, 500, "shuffled")
  base = ops.fit_base(jnp.asarray(x[:200]), jnp.asarray(y[:200]), K, jnp.asarray(mask[:200]))
  init = (base.means, base.counts, ops.covariance(base), base.n)
  for plastic in (True, False):
    means, counts, sigma, _ = _numpy_sequential(x[200:], y[200:], mask[200:], K, "reference",
                                                plastic, init)
    st = _run(update_batch, x[200:], y[200:], mask[200:], state=base, plastic=plastic)
    _assert_rel(st.means, means)
    np.testing.assert_array_equal(np.asarray(st.counts), counts)
    _assert_rel(ops.covariance(st), sigma)
    if not plastic:  # fixed: Σ is the base OAS estimate, untouched by the stream
      np.testing.assert_array_equal(np.asarray(st.scatter), np.asarray(base.scatter))
      assert int(st.cov_n) == int(base.cov_n) and int(st.n) == mask.sum()


def test_masked_and_out_of_range_rows_are_skipped():
  x, y, mask = _stream(2, 64, "shuffled")
  y_bad = y.copy()
  y_bad[~mask] = np.where(np.arange((~mask).sum()) % 2, -1, K + 5)  # garbage labels on padding
  x_bad = x.copy()
  x_bad[~mask & (np.arange(64) % 3 == 0)] = np.nan  # padding rows may hold anything
  b = _run(update_batch, x[mask], y[mask], np.ones(mask.sum(), bool), rule="reference")
  for fn in (update_batch, update_scan):
    a = _run(fn, x, y_bad, np.ones_like(mask), rule="reference")
    c = _run(fn, x_bad, y, mask, rule="reference")
    for s in (a, c):
      assert int(s.n) == int(b.n) == mask.sum()
      _assert_rel(s.scatter, b.scatter, 1e-6)
      _assert_rel(s.means, b.means, 1e-6)
  base = ops.fit_base(jnp.asarray(x_bad), jnp.asarray(y), K, jnp.asarray(mask))
  np.testing.assert_array_equal(np.isfinite(np.asarray(base.scatter)), True)


def test_pooled_equals_batch_lda_and_is_order_invariant():
  x, y, mask = _stream(3, 700, "shuffled")
  means, counts, scatter = _pooled_numpy(x, y, mask, K)
  perm = np.random.default_rng(0).permutation(len(y))
  for xs, ys, ms in ((x, y, mask), (x[perm], y[perm], mask[perm])):
    st = _run(update_batch, xs, ys, ms, rule="pooled")
    _assert_rel(st.means, means)
    np.testing.assert_array_equal(np.asarray(st.counts), counts)
    _assert_rel(st.scatter, scatter)


def test_merge_of_parts_equals_one_pass():
  x, y, mask = _stream(4, 640, "class_contiguous")
  whole = _run(update_batch, x, y, mask, rule="pooled")
  halves = [_run(update_batch, x[s], y[s], mask[s], rule="pooled")
            for s in (slice(0, 320), slice(320, 640))]
  eighths = [_run(update_batch, x[i:i + 80], y[i:i + 80], mask[i:i + 80], batch=80, rule="pooled")
             for i in range(0, 640, 80)]
  for parts in (halves, eighths):
    merged = parts[0]
    for p in parts[1:]:
      merged = merge(merged, p)
    assert int(merged.n) == int(whole.n) and int(merged.cov_n) == int(whole.cov_n)
    np.testing.assert_array_equal(np.asarray(merged.counts), np.asarray(whole.counts))
    _assert_rel(merged.means, whole.means)
    _assert_rel(merged.scatter, whole.scatter)
  # The exact base fit (no OAS) is a pooled state too, so it merges with streamed data.
  base = ops.fit_base(jnp.asarray(x[:320]), jnp.asarray(y[:320]), K, jnp.asarray(mask[:320]),
                      shrink=False)
  _assert_rel(merge(base, halves[1]).scatter, whole.scatter)


@pytest.mark.parametrize("eps", [1e-4, 0.1])
@pytest.mark.parametrize("solver", ["cholesky", "pinv"])
def test_pooled_scores_equal_sklearn_lda(eps, solver):
  """sklearn LDA(solver="lsqr", shrinkage=ε, uniform priors) on real digits.

  sklearn averages per-class covariances with the priors and shrinks each towards
  ``(tr Σ_k / p)·I``; SLDA uses the count-weighted pooled Σ and shrinks towards ``I``. The two are
  the same estimator when every class has the same count (prior average = pooled) and the
  features are scaled so that ``tr Σ / p = 1``; sklearn's intercept then differs only by the
  constant log(1/K).
  """
  x, y = load_digits(return_X_y=True)
  per_class = np.bincount(y).min()
  idx = np.concatenate([np.flatnonzero(y == k)[:per_class] for k in range(10)])
  idx = np.random.default_rng(0).permutation(idx)
  x, y = x[idx].astype(np.float64), y[idx].astype(np.int32)
  means, _, scatter = _pooled_numpy(x, y, np.ones(len(y), bool), 10)
  x = (x * np.sqrt(x.shape[1] / np.trace(scatter / len(y)))).astype(np.float32)

  sk = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=eps, priors=np.full(10, 0.1)).fit(x, y)
  ref = sk.decision_function(x) - np.log(0.1)
  st = _run(update_batch, x, y, np.ones(len(y), bool), k=10, batch=100, rule="pooled")
  got = np.asarray(scores(st, x, shrinkage=eps, solver=solver))
  _assert_rel(got, ref, 1e-4)
  np.testing.assert_array_equal(got.argmax(1), sk.predict(x))


def test_scores_formula_solvers_and_refresh():
  x, y, mask = _stream(5, 300, "shuffled", k=6, d=8)
  st = _run(update_batch, x, y, mask, k=6, rule="reference")
  sigma = np.asarray(ops.covariance(st), np.float64)
  m = np.asarray(st.means, np.float64)
  lam = np.linalg.inv((1 - 1e-4) * sigma + 1e-4 * np.eye(8))
  ref = x @ lam @ m.T - 0.5 * np.einsum("kd,de,ke->k", m, lam, m)
  assert bool(st.stale)
  for solver in ("cholesky", "pinv"):
    _assert_rel(scores(st, x, solver=solver), ref, 1e-5)
    fresh = ops.refresh(st, solver=solver)
    assert not bool(fresh.stale)
    _assert_rel(fresh.weights, lam @ m.T, 1e-5)
    np.testing.assert_array_equal(np.asarray(scores(fresh, x, solver=solver)),
                                  np.asarray(scores(st, x, solver=solver)))


def test_unseen_classes_masked_or_reference_zero():
  x, y, mask = _stream(6, 128, "shuffled", k=8, d=8)
  keep = y < 5  # classes 5..7 never arrive
  st = _run(update_batch, x[keep], y[keep], mask[keep], k=8)
  masked = np.asarray(scores(st, x))
  plain = np.asarray(scores(st, x, mask_unseen=False))
  assert np.all(np.isneginf(masked[:, 5:])) and np.all(np.isfinite(masked[:, :5]))
  np.testing.assert_array_equal(plain[:, 5:], 0.0)  # μ = 0 scores exactly 0 in the reference
  np.testing.assert_array_equal(plain[:, :5], masked[:, :5])
  # Before any data every class is unseen: all −inf, and the argmax is still defined.
  empty = np.asarray(scores(ops.init_state(8, 8), x))
  assert np.all(np.isneginf(empty))


def test_oas_equals_sklearn():
  rng = np.random.default_rng(7)
  for n, p in ((50, 20), (400, 10), (30, 1)):
    a = rng.normal(size=(p, p))
    r = (rng.normal(size=(n, p)) @ a).astype(np.float32)
    mask = rng.random(n) > 0.2
    sk = OAS(assume_centered=True).fit(r[mask].astype(np.float64))
    cov, rho = ops.oas(jnp.asarray(r), jnp.asarray(mask))
    _assert_rel(cov, sk.covariance_, 1e-5)
    if p > 1:  # sklearn reports shrinkage 0 for p = 1, where every shrinkage gives the same Σ
      np.testing.assert_allclose(float(rho), sk.shrinkage_, rtol=1e-5)


def test_fit_base_is_reference_base_init():
  x, y, mask = _stream(8, 300, "shuffled", k=6, d=10)
  st = ops.fit_base_checked(x, y, 6, mask)
  xm, ym = x[mask].astype(np.float64), y[mask]
  means = np.stack([xm[ym == c].mean(0) for c in range(6)])
  sk = OAS(assume_centered=True).fit(xm - means[ym])
  _assert_rel(st.means, means)
  np.testing.assert_array_equal(np.asarray(st.counts), np.bincount(ym, minlength=6))
  assert int(st.n) == int(st.cov_n) == mask.sum()
  _assert_rel(ops.covariance(st), sk.covariance_)


def test_fit_base_checked_rejects_bad_input():
  x, y, _ = _stream(9, 20, "shuffled", k=4, d=3)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
    ops.fit_base_checked(x, np.where(y == 0, 7, y), 4)
  with pytest.raises(ValueError, match="y must have shape"):
    ops.fit_base_checked(x, y[:5], 4)
  with pytest.raises(ValueError, match=r"x must be \[N, d\]"):
    ops.fit_base_checked(x[:, :, None], y, 4)
  with pytest.raises(ValueError, match="rule must be one of"):
    ops.update_batch(ops.init_state(4, 3), x, y, rule="welford")
