"""CCIC: the kNN prediction against scikit-learn, the step cost, and a budgeted run."""

import jax
import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

import cljax.learners as L
from cljax import data
from cljax.learners.ccic import knn_scores, sizes, step_cost
from tests.helpers import arrays, run_tasks

TINY_VIT = {"patch": 4, "depth": 1, "dim": 16, "dec_dim": 16}


def test_knn_vote_matches_sklearn_neighbours():
  x, y = arrays(data.load("digits"))
  f = x.reshape(len(x), -1)
  emb = f[:120] / np.linalg.norm(f[:120], axis=1, keepdims=True)
  valid = np.arange(120) < 100  # the last 20 slots are empty
  scores = np.asarray(knn_scores(f[200:260], emb, y[:120], valid, 3, 10))
  q = f[200:260] / np.linalg.norm(f[200:260], axis=1, keepdims=True)
  nn = NearestNeighbors(n_neighbors=3).fit(emb[:100])
  dist, idx = nn.kneighbors(q)
  votes = np.stack([np.bincount(y[:100][i], minlength=10) for i in idx])
  # mammoth models/ccic.py forward: votes − 1e-5 · squared distance to each class's nearest row
  d2 = ((q[:, None] - emb[None, :100]) ** 2).sum(-1)
  near = np.stack([d2[:, y[:100] == c].min(1) for c in range(10)], 1)
  np.testing.assert_allclose(scores, votes - 1e-5 * near, atol=1e-5)
  assert (scores.argmax(1) == votes.argmax(1)).mean() > 0.9


def test_step_cost_counts_rows():
  nl, nm, nu = sizes(48, 3)
  assert (nl, nm, nu) == (12, 12, 8)
  assert step_cost(48, 3, False) == pytest.approx((24 + 24 + 24) / 48 + 24 / 48 / 3)
  assert step_cost(48, 3, True) == pytest.approx((24 + 24 + 24 + 20) / 48 + 24 / 48 / 3)


@pytest.mark.slow  # two budgeted semi-supervised steps of a tiny ViT (compile bound)
def test_budgeted_semi_supervised_steps():
  x, y = arrays(data.load("digits"))
  lab = np.random.default_rng(0).random(len(y)) < 0.3
  learner = L.get("ccic", num_classes=10, model="vit_micro", model_kwargs=TINY_VIT,
                  batch_size=16, chunk=4, memory_size=60, checked=False)
  state = learner.init(jax.random.key(0), {"x": x[:16], "y": y[:16]})
  spent = []
  for t, cls in enumerate([[0, 1], [2, 3]]):
    idx = np.flatnonzero(np.isin(y, cls))
    for s in range(0, len(idx), 16):
      i = idx[s:s + 16]
      state, _ = learner.update(state, {"x": x[i], "y": y[i], "labeled": lab[i]},
                                jax.random.key(s))
    state, info = learner.end_of_step(state, jax.random.key(t), 20)
    spent.append(float(info.passes))
  assert all(18 <= s <= 20 for s in spent), spent
  pred = np.asarray(learner.predict(state, x[:200])).argmax(1)
  assert set(pred) <= {0, 1, 2, 3}
