"""Early stopping inside a step (``Loop.stopping``, ``cljax.train.early_stop``) against a plain
sequential rule written here, and its held-out scores against scikit-learn."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from cljax.train import early_stop
from cljax.train.early_stop import EarlyStopping
from cljax.train.loop import Loop


def _count_step(carry, data, key, i, stop):
  """carry: (passes run, a key-dependent sum): both show which steps ran."""
  del data, stop
  n, s = carry
  return (n + 1, s + jax.random.uniform(key) * (i + 1)), jnp.ones((1,))


def _scores_of(table):
  """An EarlyStopping score reading the carry's pass count (as float logits) from ``table``."""
  def score(logits_of):
    return float(table[int(np.asarray(logits_of(None))[0])])
  return score


def _logits_of(carry, x):
  del x
  return np.asarray([carry[0]])


def _reference(table, passes, every, patience, chunk, min_delta=0.0):
  """The rule as the module docstring states it, one pass at a time: scores at the start, at
  every multiple of ``every`` rounded up to ``chunk``, and at the end; (passes run, best pass,
  evaluations)."""
  every = -(-every // chunk) * chunk
  best, best_pass, bad, evals, done = table[0], 0, 0, 1, 0
  while done < passes and bad < patience:
    done = min(done + every, passes)
    s = table[done]
    evals += 1
    if not np.isnan(s) and (np.isnan(best) or s < best - min_delta):
      best, best_pass, bad = s, done, 0
    else:
      bad += 1
  return done, best_pass, evals


@pytest.mark.parametrize("unroll", [True, False])
def test_stopping_follows_the_rule(unroll):
  rng = np.random.default_rng(0)
  loops = {c: Loop(_count_step, chunk=c, unroll=unroll) for c in (1, 4)}  # compiled once each
  for chunk, every, patience, passes in itertools.product((1, 4), (1, 3, 8), (1, 2, 4),
                                                          (0, 5, 17)):
    loop = loops[chunk]
    table = rng.normal(size=passes + 1).cumsum()  # a random walk of validation scores
    table[rng.integers(0, passes + 1)] = np.nan  # a non-finite score never improves
    stop = EarlyStopping(score=_scores_of(table), every=every, patience=patience)
    key = jax.random.key(1)
    carry0 = (jnp.int32(0), jnp.float32(0))
    got, sums, st = loop.stopping(carry0, None, key, passes, stop, _logits_of)
    done, best_pass, evals = _reference(table, passes, every, patience, chunk)
    assert (st.passes, st.best_pass, st.evaluations) == (done, best_pass, evals)
    assert st.stopped == (done < passes)
    assert int(got[0]) == best_pass  # the best-scored carry is the one returned
    assert (0 if sums is None else float(sums[0])) == done  # only the steps run are counted
    # The steps that ran are the uninterrupted call's steps (same keys, same indices).
    want, _ = loop(carry0, None, key, best_pass)
    assert float(got[1]) == float(want[1])


def test_never_stopping_equals_the_plain_call():
  loop = Loop(_count_step, chunk=4)
  passes = 13
  table = -np.arange(passes + 1, dtype=float)  # improves at every evaluation
  stop = EarlyStopping(score=_scores_of(table), every=4, patience=1)
  key = jax.random.key(7)
  carry0 = (jnp.int32(0), jnp.float32(0))
  got, sums, st = loop.stopping(carry0, None, key, passes, stop, _logits_of)
  want, want_sums = loop(carry0, None, key, passes)
  assert (st.passes, st.best_pass, st.stopped, st.evaluations) == (13, 13, False, 5)
  assert float(got[1]) == float(want[1]) and float(sums[0]) == float(want_sums[0])
  # Without an EarlyStopping it is the plain call.
  got, sums, st = loop.stopping(carry0, None, key, passes, None, _logits_of)
  assert st is None and float(got[1]) == float(want[1])


def test_min_delta_needs_a_real_improvement():
  table = np.array([1.0, 0.95, 0.92, 0.5, 0.4])
  stop = EarlyStopping(score=_scores_of(table), every=1, patience=2, min_delta=0.1)
  _, _, st = Loop(_count_step, chunk=1).stopping((jnp.int32(0), jnp.float32(0)), None,
                                                 jax.random.key(0), 4, stop, _logits_of)
  assert (st.passes, st.best_pass) == (2, 0)  # 0.95 and 0.92 are within 0.1 of 1.0
  assert st.passes == _reference(table, 4, 1, 2, 1, min_delta=0.1)[0]


def test_scores_on_arrays_equal_sklearn():
  rng = np.random.default_rng(3)
  n, k = 203, 5  # not a multiple of the batch: the padded rows are left out
  y = rng.integers(0, k, n)
  w = rng.normal(size=(7, k))
  x = rng.normal(size=(n, 7)).astype(np.float32)
  calls = []

  def logits_of(xb):
    calls.append(xb.shape)
    return xb @ w

  z = x @ w
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  loss = EarlyStopping.on(x, y, every=1, patience=1, batch_size=64).score(logits_of)
  assert loss == pytest.approx(skm.log_loss(y, p, labels=range(k)), rel=1e-9)
  assert set(calls) == {(64, 7)}  # one shape: a jitted predict compiles once
  err = EarlyStopping.on(x, y, every=1, patience=1, metric="error").score(logits_of)
  assert err == pytest.approx(1 - skm.accuracy_score(y, z.argmax(1)))
  for metric in early_stop.METRICS:  # a diverged model never scores as an improvement
    assert np.isnan(early_stop.held_out_score(np.full((2, 3), np.nan), np.array([0, 1]), metric))


@pytest.mark.parametrize("kw, match", [
    (dict(every=0, patience=1), "every must be an integer >= 1"),
    (dict(every=2, patience=0), "patience must be an integer >= 1"),
    (dict(every=2, patience=1, min_delta=-1.0), "min_delta must be >= 0"),
    (dict(every=2, patience=1, metric="auc"), r"unknown early-stopping metric 'auc'; valid: "
                                               r"\['loss', 'error'\]"),
])
def test_bad_settings_say_what_is_wrong(kw, match):
  with pytest.raises(ValueError, match=match):
    EarlyStopping.on(np.zeros((3, 2)), np.zeros(3, int), **kw)


def test_extra_reports_passes_saved():
  st = early_stop.Stopped(passes=24, best_pass=16, best_score=0.3, evaluations=4, stopped=True)
  assert early_stop.extra(st, 100) == {"passes_saved": 76.0, "best_pass": 16.0,
                                       "best_score": np.float32(0.3)}
  assert early_stop.extra(None, 100) == {}


def test_scores_fall_where_accumulated_optimizer_steps_do():
  """With accumulate=4 the parameters move every 4th pass: scores between two moves would spend
  patience on an unchanged model, so they are taken every lcm(chunk, 4) passes."""
  from cljax import optim  # pylint: disable=import-outside-toplevel
  from cljax.train.loop import apply_updates  # pylint: disable=import-outside-toplevel
  tx = optim.build("sgd", 0.1, momentum=0.0, accumulate=4)

  def step(carry, data, key, i, stop):
    del data, key, i, stop
    w, opt = carry
    g = jax.grad(lambda v: jnp.sum((v - 3.0) ** 2))(w)
    w, opt = apply_updates(tx, w, opt, g)
    return (w, opt), jnp.zeros((1,))

  w0 = jnp.zeros(2)
  def score(logits_of):
    return float(np.sum((np.asarray(logits_of(None)) - 3) ** 2))
  stop = EarlyStopping(score=score, every=1, patience=1)
  logits_of = lambda carry, x: carry[0]  # noqa: E731
  loop = Loop(step, chunk=2, accumulate=4)
  (w, _), _, st = loop.stopping((w0, tx.init(w0)), None, jax.random.key(0), 16, stop, logits_of)
  assert (st.passes, st.evaluations, st.best_pass, st.stopped) == (16, 5, 16, False)
  # Scored every pass instead, the first score after the start sees the same model: it stops.
  _, _, st1 = Loop(step, chunk=1).stopping((w0, tx.init(w0)), None, jax.random.key(0), 16, stop,
                                           logits_of)
  assert (st1.passes, st1.best_pass) == (1, 0)
  np.testing.assert_allclose(np.asarray(w), 3.0 - 3.0 * 0.8 ** 4, rtol=1e-6)
