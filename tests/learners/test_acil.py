"""Tests for the acil learner: the joint ridge solution after any stream (numpy, real digits),
masks, no recompiles, the exact merge of two states."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

import cljax.learners
from cljax.ops import analytic


def _digits():
  x, y = load_digits(return_X_y=True)
  return (x / 16).astype(np.float32), y.astype(np.int32)


def _stream(learner, state, x, y, rng):
  """Batch sizes drawn at random from 1, 7 and 32 (few sizes: each one compiles once), in the
  given row order."""
  i = 0
  while i < len(y):
    b = int(rng.choice([1, 7, 32]))
    state, _ = learner.update(state, {"x": x[i:i + b], "y": y[i:i + b]}, None)
    i += b
  return state


def _joint_ridge(h, y, gamma, k=10):
  """W = (HᵀH + γI)⁻¹ HᵀY in float64, one-hot Y, no intercept."""
  h = np.asarray(h, np.float64)
  return np.linalg.solve(h.T @ h + gamma * np.eye(h.shape[1]), h.T @ np.eye(k)[y])


@pytest.mark.parametrize("expansion_dim", [0, 256])
def test_weights_equal_joint_ridge_solution_whatever_batches_and_order(expansion_dim):
  x, y = _digits()
  learner = cljax.learners.get("acil", num_classes=10, expansion_dim=expansion_dim, ridge=0.1)
  init = learner.init(jax.random.key(3), {"x": x[:4], "y": y[:4]})
  h = x if init.projection is None else np.maximum(
      x.astype(np.float64) @ np.asarray(init.projection, np.float64), 0)
  w = _joint_ridge(h, y, 0.1)
  sorted_rows = np.argsort(y, kind="stable")  # class-incremental order
  shuffled = np.random.default_rng(1).permutation(len(y))  # iid order
  states = [_stream(learner, init, x[o], y[o], np.random.default_rng(s))
            for s, o in enumerate((sorted_rows, shuffled))]
  for state in states:
    np.testing.assert_allclose(np.asarray(state.weights), w, rtol=0,
                               atol=5e-4 * np.abs(w).max())
    pred = np.asarray(learner.predict(state, x)).argmax(1)
    assert (pred == (h @ w).argmax(1)).mean() > 0.999
  assert (np.asarray(learner.predict(states[0], x)).argmax(1) == y).mean() > 0.93


def test_masked_rows_unseen_classes_and_validation():
  x, y = _digits()
  learner = cljax.learners.get("acil", num_classes=10, expansion_dim=0, ridge=0.1)
  state = learner.init(None, {"x": x[:8], "y": y[:8]})
  keep = np.zeros(64, bool)
  keep[::3] = True
  first = np.flatnonzero(y < 3)[:64]
  state, info = learner.update(state, {"x": x[first], "y": y[first], "valid": keep}, None)
  assert int(info.extra["examples"]) == keep.sum()
  ref = _joint_ridge(x[first][keep], y[first][keep], 0.1)
  np.testing.assert_allclose(np.asarray(state.weights), ref, atol=5e-4 * np.abs(ref).max())
  s = np.asarray(learner.predict(state, x[:5]))
  assert np.isneginf(s[:, 3:]).all()
  for bad in (dict(ridge=0.0), dict(expansion_dim=-1)):
    with pytest.raises(ValueError, match="acil"):
      cljax.learners.get("acil", num_classes=10, **bad)


def test_no_recompiles_as_the_stream_grows(compiles):
  x, y = _digits()
  learner = cljax.learners.get("acil", num_classes=10, expansion_dim=128, checked=False)
  state = learner.init(jax.random.key(0), {"x": x[:1], "y": y[:1]})
  counts = []
  for i in range(60):
    with compiles() as n:
      state, _ = learner.update(state, {"x": x[i:i + 1], "y": y[i:i + 1]}, None)
    counts.append(n[0])
  assert counts[0] >= 1 and sum(counts[1:]) == 0, counts


def test_two_states_over_disjoint_rows_merge_exactly():
  x, y = _digits()
  learner = cljax.learners.get("acil", num_classes=10, expansion_dim=0, ridge=0.1)
  ex = {"x": x[:4], "y": y[:4]}
  half = np.random.default_rng(0).random(len(y)) < 0.5
  a = _stream(learner, learner.init(None, ex), x[half], y[half], np.random.default_rng(0))
  b = _stream(learner, learner.init(None, ex), x[~half], y[~half], np.random.default_rng(1))
  r, w = analytic.rls_merge(a.r, a.weights, b.r, b.weights, 0.1)
  ref = _joint_ridge(x, y, 0.1)
  np.testing.assert_allclose(np.asarray(w), ref, atol=5e-4 * np.abs(ref).max())
