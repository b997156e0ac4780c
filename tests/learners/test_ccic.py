"""CCIC: the kNN prediction against scikit-learn, the step cost, and a budgeted run."""

import jax
import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

import cljax.learners as L
from cljax import data
from cljax.learners.ccic import consistency_loss, knn_scores, pseudo_labels, sizes, step_cost
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


def _mammoth_pseudo_and_loss_u(aug_logits, mix_logits, k_aug, sharp_temp):
  """aimagelab/mammoth ``models/ccic.py`` (at e75a491) in NumPy: lines 138-141, the
  pseudo-labels (``outputs.reshape(k_aug, -1, K).mean(0) ** (1 / T)``, renormalised, then
  ``.repeat(k_aug, 1)``), and line 182, ``F.mse_loss(pseudo, unsup_mix_outputs) / K``. The rows
  are given view-major (row v·n + i = view v of image i), the order that reshape assumes."""
  n_k = aug_logits.shape[1]
  mean = aug_logits.reshape(k_aug, -1, n_k).mean(0)
  sharp = mean ** (1 / sharp_temp)
  norm = sharp / sharp.sum(1)[:, None]
  pseudo = np.tile(norm, (k_aug, 1))
  return pseudo, np.mean((pseudo - mix_logits) ** 2) / n_k


def test_pseudo_labels_and_consistency_follow_mammoth():
  rng = np.random.default_rng(0)
  k_aug, n, n_k = 3, 5, 10
  aug = rng.normal(size=(k_aug * n, n_k)).astype(np.float32) * 2
  mix = rng.normal(size=(k_aug * n, n_k)).astype(np.float32) * 2
  seen = np.arange(n_k) < 4  # the reference uses every class's logit, seen or not
  want_p, want_l = _mammoth_pseudo_and_loss_u(aug.astype(np.float64), mix.astype(np.float64),
                                              k_aug, 0.5)
  got_p = np.asarray(pseudo_labels(aug, k_aug, 0.5, seen))
  np.testing.assert_allclose(got_p, want_p, rtol=1e-5, atol=1e-6)
  got_l = float(consistency_loss(got_p, mix, np.ones(k_aug * n, np.float32), seen))
  assert got_l == pytest.approx(want_l, rel=1e-5)
  # padding rows (weight 0) do not count
  w = np.r_[np.ones(k_aug * n - 2), 0, 0].astype(np.float32)
  got_pad = float(consistency_loss(got_p, mix, w, seen))
  assert got_pad == pytest.approx(np.mean((want_p[:-2] - mix[:-2]) ** 2) / n_k, rel=1e-5)
  # the pre-issue-23 option: MixMatch's softmax over the seen classes
  soft = np.asarray(pseudo_labels(aug, k_aug, 0.5, seen, "softmax"))
  assert np.allclose(soft[:, ~seen], 0) and np.allclose(soft.sum(1), 1, atol=1e-5)


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
