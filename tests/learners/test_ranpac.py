"""Tests for the ranpac learner: exact streamed Gram statistics, the paper's ridge rule against a
numpy re-implementation on the same split, and no recompiles."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

import cljax.learners
from cljax.learners import ranpac as ranpac_lib


def _digits():
  x, y = load_digits(return_X_y=True)
  return (x / 16).astype(np.float32), y.astype(np.int32)


def _feed(learner, state, x, y, sizes):
  i, j = 0, 0
  while i < len(y):
    b = sizes[j % len(sizes)]
    state, _ = learner.update(state, {"x": x[i:i + b], "y": y[i:i + b]}, None)
    i, j = i + b, j + 1
  return state


def _ridge_rule(h, y, k=10):
  """RanPAC.py optimise_ridge_parameter in numpy (float64) on our split: every fifth row of the
  step validates, the others fit; mean squared error over all K columns."""
  h = np.asarray(h, np.float64)
  yy = np.eye(k)[y]
  val = np.arange(len(y)) % 5 == 4
  losses = []
  for lam in 10.0 ** np.arange(-8, 9):
    g = h[~val].T @ h[~val] + lam * np.eye(h.shape[1])
    w = np.linalg.solve(g, h[~val].T @ yy[~val])
    losses.append(np.mean((h[val] @ w - yy[val]) ** 2))
  return 10.0 ** np.arange(-8, 9)[int(np.argmin(losses))], np.asarray(losses)


def test_statistics_ridge_rule_and_solution_match_numpy_on_digits():
  x, y = _digits()
  order = np.argsort(y, kind="stable")
  x, y = x[order], y[order]
  learner = cljax.learners.get("ranpac", num_classes=10, projection_dim=200)
  state = learner.init(jax.random.key(0), {"x": x[:4], "y": y[:4]})
  h = np.maximum(x.astype(np.float64) @ np.asarray(state.projection, np.float64), 0)
  steps = [np.flatnonzero(y < 5), np.flatnonzero(y >= 5)]
  for t, rows in enumerate(steps):
    state = _feed(learner, state, x[rows], y[rows], [1, 13, 64])
    g = h[:rows[-1] + 1].T @ h[:rows[-1] + 1]
    np.testing.assert_allclose(np.asarray(state.gram), g, rtol=1e-5, atol=1e-6 * np.abs(g).max())
    val_rows = (np.arange(len(rows)) % 5 == 4).sum()
    assert int(state.step_val_rows) == val_rows
    state, info = learner.end_of_step(state, jax.random.key(t))
    lam, losses = _ridge_rule(h[rows], y[rows])
    # float32 solves agree with float64 ones where the choice is clear; the chosen λ must be
    # one whose float64 loss is within 1% of the best.
    got = float(info.extra["ridge"])
    assert losses[int(np.round(np.log10(got))) + 8] <= losses.min() * 1.01, (got, lam, losses)
    seen = h[:rows[-1] + 1]
    w = np.linalg.solve(seen.T @ seen + got * np.eye(200), seen.T @ np.eye(10)[y[:rows[-1] + 1]])
    np.testing.assert_allclose(np.asarray(state.weights), w, atol=2e-3 * np.abs(w).max())
    assert int(state.step_rows) == 0 and float(np.abs(np.asarray(state.step_val)).max()) == 0
    np.testing.assert_array_equal(np.asarray(state.step_start), np.asarray(state.gram))
  acc = (np.asarray(learner.predict(state, x)).argmax(1) == y).mean()
  assert acc > 0.95, acc


def test_fixed_ridge_keeps_no_step_statistics_and_stale_predict_solves():
  x, y = _digits()
  learner = cljax.learners.get("ranpac", num_classes=10, projection_dim=0, ridge=1.0)
  state = learner.init(None, {"x": x[:4], "y": y[:4]})
  assert state.step_val.shape == (0, 0) == state.step_start.shape and state.projection is None
  state = _feed(learner, state, x, y, [100])
  before = np.asarray(learner.predict(state, x))  # stale: solved on the fly
  state, _ = learner.end_of_step(state, jax.random.key(0))
  np.testing.assert_allclose(np.asarray(learner.predict(state, x)), before, rtol=1e-5, atol=1e-5)
  w = np.linalg.solve(x.T.astype(np.float64) @ x + np.eye(64), x.T @ np.eye(10)[y])
  np.testing.assert_allclose(np.asarray(state.weights), w, atol=1e-4 * np.abs(w).max())
  for bad in (dict(ridge=0.0), dict(ridge="best"), dict(projection_dim=-2)):
    with pytest.raises(ValueError, match="ranpac"):
      cljax.learners.get("ranpac", num_classes=10, **bad)


def test_no_recompiles_as_the_stream_grows(compiles):
  x, y = _digits()
  learner = cljax.learners.get("ranpac", num_classes=10, projection_dim=128, checked=False)
  state = learner.init(jax.random.key(0), {"x": x[:8], "y": y[:8]})
  counts = []
  for t in range(3):
    for i in range(t * 80, t * 80 + 80, 8):
      with compiles() as n:
        state, _ = learner.update(state, {"x": x[i:i + 8], "y": y[i:i + 8]}, None)
        learner.predict(state, x[:32])
      counts.append(n[0])
    with compiles() as n:
      state, _ = learner.end_of_step(state, jax.random.key(t))
    counts.append(n[0])
  assert sum(counts[12:]) == 0, counts
  assert ranpac_lib.RIDGES.shape == (17,)
