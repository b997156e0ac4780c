"""RanDumb: one example at a time = the reference's offline LDA (per-class OAS averaged by the
priors: scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr", covariance_estimator=OAS())``)
on the same random features; ``covariance="pooled"`` = one OAS of the pooled covariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.covariance import OAS
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.kernel_approximation import RBFSampler

import cljax.learners as L
from cljax import data
from cljax.learners import randumb as randumb_lib
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


def _features(state, x, dim=D):
  net = Net.named("random_fourier", 10, dim=dim)
  return np.asarray(net.features(state.embed, jnp.asarray(x)), np.float64)


def _oas(emp, n):
  """scikit-learn's ``_oas`` (sklearn/covariance/_shrunk_covariance.py) on an empirical
  covariance of n rows: ρ = min((α + μ²) / ((n + 1)(α − μ²/p)), 1), (1 − ρ) E + ρ μ I."""
  p = emp.shape[0]
  alpha, mu = np.mean(emp ** 2), np.trace(emp) / p
  den = (n + 1) * (alpha - mu ** 2 / p)
  rho = 1.0 if den == 0 else min((alpha + mu ** 2) / den, 1.0)
  return (1 - rho) * emp + rho * mu * np.eye(p)


def reference_lda_scores(f, y, ft):
  """The reference's classifier by hand, float64: drimpossible/RanDumb ``src/main.py`` (at
  14a51ee, lines 86-89) fits ``LinearDiscriminantAnalysis(solver="lsqr",
  covariance_estimator=OAS(assume_centered=False))``; scikit-learn 1.9's ``_class_cov`` and ``_cov``
  (sklearn/discriminant_analysis.py) fit the OAS to each class's rows (centred on the class mean,
  divided by its count) and sum the shrunk covariances weighted by the priors c_k / n;
  ``_solve_lstsq`` gives W = lstsq(Σ, Mᵀ), b = −½ diag(M W) + log priors."""
  classes = np.unique(y)
  mu = np.stack([f[y == k].mean(0) for k in classes])
  priors = np.array([np.mean(y == k) for k in classes])
  cov = sum(p * _oas((f[y == k] - m).T @ (f[y == k] - m) / np.sum(y == k), np.sum(y == k))
            for k, m, p in zip(classes, mu, priors))
  w = np.linalg.lstsq(cov, mu.T, rcond=None)[0]
  return ft @ w - 0.5 * np.sum(mu * w.T, 1) + np.log(priors)


def test_online_equals_the_reference_per_class_oas_lda(digits, streamed):
  (x, y), (xt, yt) = digits
  learner, state, spent = streamed
  assert spent == [0.0] * 5  # no gradient pass, whatever the budget
  assert state.class_scatter.shape == (10, D, D)  # per-class OAS is the default
  scores = np.asarray(learner.predict(state, xt))
  f, ft = _features(state, x), _features(state, xt)
  want = reference_lda_scores(f, y, ft)
  np.testing.assert_allclose(scores, want, rtol=1e-4, atol=2e-3 * np.abs(want).max())
  assert (scores.argmax(1) == want.argmax(1)).mean() >= 0.995
  # and scikit-learn itself, the reference's call
  ref = LinearDiscriminantAnalysis(solver="lsqr", covariance_estimator=OAS()).fit(f, y)
  np.testing.assert_allclose(ref.decision_function(ft), want, rtol=1e-6, atol=1e-6)
  assert (scores.argmax(1) == yt).mean() > 0.97


@pytest.mark.slow  # another stream and its compiles (~10 s idle)
def test_pooled_option_equals_offline_pooled_oas_lda(digits):
  (x, y), (xt, _) = digits
  learner = L.get("randumb", num_classes=10, embed_dim=128, covariance="pooled", checked=False)
  state, _ = run_tasks(learner, x, y, TASKS, bs=8)
  assert state.class_scatter is None and state.lda.scatter.shape == (128, 128)
  pred = np.asarray(learner.predict(state, xt)).argmax(1)
  # Offline, by hand in float64 on the same embedding: class means, pooled within-class
  # covariance of the residuals, scikit-learn's OAS, no ridge, log priors.
  f, ft = _features(state, x, 128), _features(state, xt, 128)
  mu = np.stack([f[y == k].mean(0) for k in range(10)])
  cov = OAS(assume_centered=True).fit(f - mu[y]).covariance_
  w = np.linalg.solve(cov, mu.T)
  b = -0.5 * np.sum(mu * w.T, 1) + np.log(np.bincount(y) / len(y))
  assert (pred == (ft @ w + b).argmax(1)).mean() >= 0.995


@pytest.mark.slow  # three streams and their compiles (~10 s idle)
def test_merge_of_two_disjoint_streams_is_one_stream(digits):
  # Data-parallel shards: the statistics of two halves merged (Chan et al.) = one pass.
  (x, y), (xt, _) = digits
  # a fixed γ: both shards embed alike, no warm-up
  fixed = L.get("randumb", num_classes=10, embed_dim=64, gamma=0.01, checked=False)
  one, _ = run_tasks(fixed, x, y, TASKS, bs=16)
  a, _ = run_tasks(fixed, x[::2], y[::2], TASKS, bs=16)
  b, _ = run_tasks(fixed, x[1::2], y[1::2], TASKS, bs=16)
  ab = randumb_lib.merge(a, b)
  np.testing.assert_array_equal(np.asarray(ab.lda.counts), np.asarray(one.lda.counts))
  np.testing.assert_allclose(np.asarray(ab.lda.means), np.asarray(one.lda.means), atol=1e-5)
  s1, s2 = np.asarray(one.class_scatter), np.asarray(ab.class_scatter)
  assert np.abs(s1 - s2).max() <= 1e-4 * np.abs(s1).max()
  np.testing.assert_allclose(np.asarray(fixed.predict(ab, xt)), np.asarray(fixed.predict(one, xt)),
                             rtol=1e-3, atol=1e-2)


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
  s1, s37 = np.asarray(state1.class_scatter), np.asarray(state37.class_scatter)
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
  with pytest.raises(ValueError, match="covariance"):
    L.get("randumb", num_classes=3, covariance="diagonal")
  with pytest.raises(ValueError, match="covariance='pooled'"):  # 4·10·25,000² bytes = 23 GiB
    L.get("randumb", num_classes=10, embed_dim=25000)
  L.get("randumb", num_classes=10, embed_dim=25000, covariance="pooled")  # 2.3 GiB: allowed


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
