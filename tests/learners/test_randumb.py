"""RanDumb: one example at a time = offline LDA with OAS on the same random features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.covariance import OAS
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.kernel_approximation import RBFSampler

import cljax.learners as L
from cljax import data
from cljax.models.pure import Net
from tests.helpers import arrays, run_tasks

TASKS = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
D = 384


@pytest.fixture(scope="module")
def digits():
  ds = data.load("digits")
  return arrays(ds), arrays(ds, "test")


@pytest.fixture(scope="module")
def streamed(digits):
  """randumb after the class-incremental digits stream, one example per update."""
  (x, y), _ = digits
  learner = L.get("randumb", num_classes=10, embed_dim=D, checked=False)
  state, spent = run_tasks(learner, x, y, TASKS, bs=1)
  return learner, state, spent


def _features(state, x):
  net = Net.named("random_fourier", 10, dim=D)
  return np.asarray(net.features(state.embed, jnp.asarray(x)), np.float64)


def test_online_equals_offline_pooled_oas_lda_and_sklearn(digits, streamed):
  (x, y), (xt, yt) = digits
  learner, state, spent = streamed
  assert spent == [0.0] * 5  # no gradient pass, whatever the budget
  pred = np.asarray(learner.predict(state, xt)).argmax(1)
  # Offline, by hand in float64 on the same embedding: class means, pooled within-class
  # covariance of the residuals, scikit-learn's OAS, no ridge, log priors.
  f, ft = _features(state, x), _features(state, xt)
  mu = np.stack([f[y == k].mean(0) for k in range(10)])
  cov = OAS(assume_centered=True).fit(f - mu[y]).covariance_
  w = np.linalg.solve(cov, mu.T)
  b = -0.5 * np.sum(mu * w.T, 1) + np.log(np.bincount(y) / len(y))
  want = (ft @ w + b).argmax(1)
  assert (pred == want).mean() >= 0.995
  # RanDumb's reference estimator (src/main.py: per-class OAS averaged by the priors) on the
  # same embedding: the criterion, within 0.5 points of accuracy.
  ref = LinearDiscriminantAnalysis(solver="lsqr", covariance_estimator=OAS()).fit(f, y)
  acc, acc_ref = (pred == yt).mean(), (ref.predict(ft) == yt).mean()
  assert abs(acc - acc_ref) <= 0.005, (acc, acc_ref)
  assert acc > 0.97


def test_batch_size_does_not_change_the_statistics(digits, streamed):
  (x, y), _ = digits
  learner, state1, _ = streamed
  # gamma="scale" is fixed from the first 256 rows, whatever the batch size: batches of 37
  # straddle that boundary (256 = 6·37 + 34) and must give the same γ and statistics.
  state37, _ = run_tasks(learner, x, y, TASKS, bs=37)
  assert float(state37.embed["gamma"]) == pytest.approx(float(state1.embed["gamma"]),
                                                           rel=1e-6)
  np.testing.assert_array_equal(np.asarray(state1.lda.counts), np.asarray(state37.lda.counts))
  np.testing.assert_allclose(np.asarray(state1.lda.means), np.asarray(state37.lda.means),
                             atol=1e-5)
  s1, s37 = np.asarray(state1.lda.scatter), np.asarray(state37.lda.scatter)
  assert np.abs(s1 - s37).max() <= 1e-4 * np.abs(s1).max()


def test_gamma_from_the_first_rows_and_predictions_while_warming_up(digits):
  (x, y), (xt, _) = digits
  idx = np.random.default_rng(0).permutation(np.flatnonzero(y < 4))
  xs, ys = x[idx], y[idx]
  one = lambda i: {"x": xs[i:i + 1], "y": ys[i:i + 1]}  # noqa: E731

  def feed(learner, n):
    state = learner.init(jax.random.key(0), one(0))
    for i in range(n):
      state, _ = learner.update(state, one(i), jax.random.key(i))
    return state

  a = L.get("randumb", num_classes=10, embed_dim=64, gamma_rows=64, checked=False)
  b = L.get("randumb", num_classes=10, embed_dim=64, gamma_rows=40, checked=False)
  sa, sb = feed(a, 40), feed(b, 40)
  # scikit-learn's gamma="scale" (RBFSampler._gamma) of exactly the first 40 rows
  want = RBFSampler(gamma="scale").fit(xs[:40].reshape(40, -1))._gamma
  assert float(sb.embed["gamma"]) == pytest.approx(want, rel=1e-5)
  assert int(np.asarray(sb.lda.counts).sum()) == 40  # buffer full: streamed into the head
  assert int(np.asarray(sa.lda.counts).sum()) == 0  # still warming up
  # while warming up, a predicts with γ and the head of its 40 buffered rows: b's
  np.testing.assert_allclose(np.asarray(a.predict(sa, xt)), np.asarray(b.predict(sb, xt)),
                             rtol=1e-4, atol=1e-3)
  sa = feed(a, 70)  # past 64: γ of the first 64 rows, then 6 more rows into the head
  want = RBFSampler(gamma="scale").fit(xs[:64].reshape(64, -1))._gamma
  assert float(sa.embed["gamma"]) == pytest.approx(want, rel=1e-5)
  assert int(np.asarray(sa.lda.counts).sum()) == 70


def test_relu_variant_predicts_only_seen_classes_without_recompiles(digits, compiles):
  (x, y), (xt, _) = digits
  learner = L.get("randumb", num_classes=10, embedding="random_relu", embed_dim=64,
                  checked=False)
  learner.predict(run_tasks(learner, x, y, [[0]], bs=8)[0], xt)  # every piece compiles once
  with compiles() as n:
    state, _ = run_tasks(learner, x, y, [[3, 7], [5]], bs=8)
    pred = np.asarray(learner.predict(state, xt)).argmax(1)
  assert n[0] == 0, n
  assert set(pred) <= {3, 5, 7}


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="embedding"):
    L.get("randumb", num_classes=3, embedding="random_sine")
  with pytest.raises(ValueError, match="gamma"):
    L.get("randumb", num_classes=3, gamma=-1.0)
  with pytest.raises(ValueError, match="gamma_rows"):
    L.get("randumb", num_classes=3, gamma_rows=1)


@pytest.mark.parametrize("hp", [dict(gamma_rows=16), dict(embedding="random_relu")],
                         ids=["fourier-warmup", "relu"])
def test_backbone_equals_its_features_given_as_inputs(digits, hp):
  # The backbone runs once per row: on raw inputs it gives what its features, given as inputs,
  # give (the warm-up rows are kept after the backbone).
  (x, y), (xt, _) = digits
  x, y = x[:40].reshape(40, -1), y[:40]
  proj = jnp.asarray(np.random.default_rng(0).normal(size=(x.shape[1], 12)).astype(np.float32))
  backbone = lambda a: jnp.tanh(a.reshape(a.shape[0], -1) @ proj)  # noqa: E731
  feats = np.asarray(backbone(jnp.asarray(x)))
  with_bb = L.get("randumb", num_classes=10, embed_dim=32, backbone=backbone, **hp)
  plain = L.get("randumb", num_classes=10, embed_dim=32, **hp)
  sa = with_bb.init(jax.random.key(0), {"x": x[:8], "y": y[:8]})
  sb = plain.init(jax.random.key(0), {"x": feats[:8], "y": y[:8]})
  for i in range(0, 40, 8):
    sa, _ = with_bb.update(sa, {"x": x[i:i + 8], "y": y[i:i + 8]}, jax.random.key(i))
    sb, _ = plain.update(sb, {"x": feats[i:i + 8], "y": y[i:i + 8]}, jax.random.key(i))
  xt = xt[:20].reshape(20, -1)
  np.testing.assert_allclose(np.asarray(with_bb.predict(sa, xt)),
                             np.asarray(plain.predict(sb, backbone(jnp.asarray(xt)))),
                             rtol=1e-5, atol=1e-4)
