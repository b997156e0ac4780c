"""Tests for the slda learner: protocol, real-data accuracy, recompiles, checkpoints, sharding."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from sklearn.datasets import load_digits

import cljax.learners
from cljax.learner import BatchError
from cljax.learners import slda as slda_lib
from cljax.ops import slda as ops

BATCH = 64

if jax.default_backend() == "cpu":
  same = np.testing.assert_array_equal  # XLA:CPU is deterministic: bit equality
else:
  # GPU reductions (atomics, autotuned kernels) may round differently from run to run and
  # between two compiled programs; same results up to float32 rounding.
  def same(a, b, err_msg=""):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=err_msg)


def _batches(x, y, batch=BATCH, labeled=None):
  """Fixed-size batches; the ragged tail is padded (valid False, garbage label -1)."""
  for i in range(0, len(y), batch):
    n = min(batch, len(y) - i)
    pad = batch - n
    xb = np.concatenate([x[i:i + n], np.zeros((pad,) + x.shape[1:], x.dtype)])
    yb = np.concatenate([y[i:i + n], np.full(pad, -1, np.int32)])
    lab = np.ones(batch, bool) if labeled is None else np.concatenate(
        [labeled[i:i + n], np.zeros(pad, bool)])
    yield {"x": xb, "y": yb, "valid": np.arange(batch) < n, "labeled": lab}


def _digits_class_incremental(seed=0):
  """Real digits as raw 64-d features; train stream sorted by class (class-incremental)."""
  x, y = load_digits(return_X_y=True)
  x, y = x.astype(np.float32), y.astype(np.int32)
  perm = np.random.default_rng(seed).permutation(len(y))
  tr, te = perm[:1300], perm[1300:]
  order = tr[np.argsort(y[tr], kind="stable")]
  return x[order], y[order], x[te], y[te]


def _example(x):
  """``init``'s example batch: the first BATCH rows (SLDA reads only the shape of ``x``)."""
  return {"x": x[:BATCH], "y": np.zeros(len(x[:BATCH]), np.int32)}


def _stream(learner, state, x, y, **kw):
  for b in _batches(x, y, **kw):
    state, info = learner.update(state, b, None)
  return state, info


@pytest.mark.parametrize("rule", ["reference", "pooled"])
def test_digits_class_incremental_accuracy_and_no_recompiles(rule, compiles):
  xtr, ytr, xte, yte = _digits_class_incremental()
  learner = cljax.learners.get("slda", num_classes=10, update_rule=rule)
  state = learner.init(jax.random.key(0), _example(xtr))
  accs, step_compiles, predict_compiles = [], [], []
  for c in range(10):  # ten time steps, one new class each; evaluate on the classes seen so far
    sel = ytr == c
    with compiles() as n:
      state, info = _stream(learner, state, xtr[sel], ytr[sel])
      assert info.passes.dtype == jnp.float32 and float(info.passes) == 0.0
      state, eos = learner.end_of_step(state, jax.random.key(c))
    step_compiles.append(n[0])
    assert float(eos.passes) == 0.0 and not bool(state.stale)
    seen = yte <= c
    with compiles() as n:
      logits = np.asarray(learner.predict(state, xte[seen]))
    predict_compiles.append(n[0])
    accs.append(float((logits.argmax(1) == yte[seen]).mean()))
  assert accs[-1] > 0.9, accs  # measured 0.96 (reference) and 0.97 (pooled)
  assert min(accs) > 0.85, accs
  # update and end_of_step compile in the first step only: ragged tails, new classes, nothing more.
  assert step_compiles[0] >= 1 and step_compiles[1:] == [0] * 9, step_compiles
  # predict was called with varying numbers of test rows (one compile each); none more than that.
  assert sum(predict_compiles) == len({int((yte <= c).sum()) for c in range(10)}), \
      predict_compiles


def test_registry_hparams_and_validation():
  assert "slda" in cljax.learners.names()
  names = set(cljax.learners.hparam_names("slda"))
  assert {"num_classes", "shrinkage", "covariance", "update_rule", "solver", "mask_unseen",
          "backbone"} <= names
  # d comes from init's example batch, not from an argument; the backbone is a declared input.
  assert "feature_dim" not in names and cljax.learners.inputs("slda") == ("backbone", "base")
  with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['feature_dim'\]"):
    cljax.learners.get("slda", num_classes=5, feature_dim=4)
  learner = cljax.learners.get("slda", num_classes=5)
  bare = cljax.learners.get("slda", num_classes=5, checked=False)
  assert learner.name == "slda" and learner.hparams["shrinkage"] == 1e-4
  with pytest.raises(ValueError, match="covariance must be one of"):
    cljax.learners.get("slda", num_classes=5, covariance="frozen")
  with pytest.raises(ValueError, match="update_rule"):
    cljax.learners.get("slda", num_classes=5, update_rule="chan")
  with pytest.raises(ValueError, match="solver"):
    cljax.learners.get("slda", num_classes=5, solver="qr")
  with pytest.raises(BatchError, match="missing key"):
    learner.init(None, {"x": np.zeros((2, 4), np.float32)})
  state = learner.init(None, _example(np.zeros((2, 2, 2), np.float32)))  # flattened: d = 4
  assert state.means.shape == (5, 4)
  flat = bare.init(None, _example(np.zeros((2, 4), np.float32)))
  assert flat.means.shape == (5, 4)
  bad = {"x": np.zeros((2, 3), np.float32), "y": np.zeros(2, np.int32),
         "valid": np.ones(2, bool), "labeled": np.ones(2, bool)}
  # Checked: the batch's shape against init's example batch, before any jitted code runs.
  with pytest.raises(BatchError, match=r"examples of shape \(3,\), but init's example batch had"):
    learner.update(state, bad, None)
  with pytest.raises(BatchError, match=r"examples of shape \(3,\)"):
    learner.predict(state, np.zeros((2, 3), np.float32))
  # Bare: the jitted functions still refuse a feature dimension that does not fit the state.
  with pytest.raises(ValueError, match="features of dim 3, but the state has feature_dim=4"):
    bare.update(flat, bad, None)
  with pytest.raises(ValueError, match="feature_dim=4"):
    bare.predict(flat, np.zeros((2, 3), np.float32))
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
    slda_lib.fit_base(state, np.zeros((3, 4), np.float32), np.array([0, 5, 1]))
  with pytest.raises(ValueError, match="features of dim 3"):
    slda_lib.fit_base(state, np.zeros((3, 3), np.float32), np.array([0, 1, 1]))


def test_unlabeled_and_invalid_rows_do_not_update():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(96, 6)).astype(np.float32)
  y = rng.integers(0, 4, 96).astype(np.int32)
  labeled = rng.random(96) > 0.5
  learner = cljax.learners.get("slda", num_classes=4)
  s0 = learner.init(None, _example(x))
  a, info = _stream(learner, s0, x, y, labeled=labeled)
  b, _ = _stream(learner, s0, x[labeled], y[labeled])
  assert int(a.n) == int(b.n) == labeled.sum()
  np.testing.assert_allclose(np.asarray(a.scatter), np.asarray(b.scatter), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(a.means), np.asarray(b.means), rtol=1e-6, atol=1e-6)
  # Out-of-range labels on labelled rows: the checked learner refuses the batch (one line) ...
  bad = next(_batches(x, np.where(np.arange(96) % 3 == 0, 9, y)))
  with pytest.raises(BatchError, match=r"label 9 outside \[0, 4\)"):
    learner.update(s0, bad, None)
  # ... and the bare jitted update (which cannot raise on values) ignores and counts them.
  bare = cljax.learners.get("slda", num_classes=4, checked=False)
  _, info = bare.update(s0, bad, None)
  assert int(info.extra["ignored"]) == 22 and int(info.extra["examples"]) == BATCH - 22


def test_fixed_covariance_fit_base_and_mask_unseen():
  xtr, ytr, xte, yte = _digits_class_incremental(1)
  base = ytr < 5
  fixed = cljax.learners.get("slda", num_classes=10, covariance="fixed")
  plastic = cljax.learners.get("slda", num_classes=10, covariance="plastic", mask_unseen=False)
  s0 = slda_lib.fit_base(fixed.init(None, _example(xtr)), xtr[base], ytr[base])
  assert int(s0.n) == base.sum() and bool(s0.stale)
  logits = np.asarray(fixed.predict(s0, xte))
  assert np.all(np.isneginf(logits[:, 5:]))
  np.testing.assert_array_equal(np.asarray(plastic.predict(s0, xte))[:, 5:], 0.0)
  sf, _ = _stream(fixed, s0, xtr[~base], ytr[~base])
  sp, _ = _stream(plastic, s0, xtr[~base], ytr[~base])
  same(np.asarray(sf.scatter), np.asarray(s0.scatter))
  assert int(sf.cov_n) == base.sum() and int(sf.n) == len(ytr)
  assert int(sp.cov_n) == len(ytr) and not np.allclose(np.asarray(sp.scatter), np.asarray(s0.scatter))
  np.testing.assert_allclose(np.asarray(sf.means), np.asarray(sp.means))
  for learner, state in ((fixed, sf), (plastic, sp)):
    acc = (np.asarray(learner.predict(state, xte)).argmax(1) == yte).mean()
    assert acc > 0.85, (learner.hparams["covariance"], acc)


class _Base:
  """A base initialisation as the learner reads it (``BaseInit`` offers the same three)."""

  def __init__(self, x, y):
    self.x, self.y = x, y

  def backbone(self):
    return lambda x: x.reshape(x.shape[0], -1)  # raw pixels as features


def test_base_init_is_fitted_in_init_and_its_step_is_not_counted_twice():
  """Deep_SLDA's experiment.py 103-129: fit_base on the first increment, then stream the rest.

  The experiment hands ``base`` and also streams the base set as step 0: that step changes
  nothing (``skip_base_step``), and later steps stream as usual.
  """
  xtr, ytr, xte, yte = _digits_class_incremental(6)
  first = ytr < 4
  base = _Base(xtr[first], ytr[first])
  learner = cljax.learners.get("slda", num_classes=10, covariance="fixed", base=base)
  s0 = learner.init(None, _example(xtr))
  ref = ops.fit_base_checked(xtr[first], ytr[first], 10)  # means, counts, OAS Σ, n = N
  for name in ("means", "counts", "scatter", "n", "cov_n"):
    same(np.asarray(getattr(s0, name)), np.asarray(getattr(ref, name)), err_msg=name)
  assert bool(s0.skip) and float(np.abs(np.asarray(s0.scatter)).max()) > 0
  s1, info = _stream(learner, s0, xtr[first], ytr[first])  # step 0 = the base set again
  assert int(info.extra["skipped"]) > 0 and int(info.extra["examples"]) == 0
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s0)):
    same(np.asarray(a), np.asarray(b))
  s1, _ = learner.end_of_step(s1, jax.random.key(0))
  assert not bool(s1.skip)
  s2, _ = _stream(learner, s1, xtr[~first], ytr[~first])
  assert int(s2.n) == len(ytr) and int(s2.counts.sum()) == len(ytr)  # each example once
  same(np.asarray(s2.scatter), np.asarray(ref.scatter))  # fixed: Σ from the base set only
  # Without the skip (a base set that is not in the stream) step 0's rows count again.
  again = cljax.learners.get("slda", num_classes=10, base=base, skip_base_step=False)
  s3, _ = _stream(again, again.init(None, _example(xtr)), xtr[first], ytr[first])
  assert int(s3.n) == 2 * first.sum()
  with pytest.raises(ValueError, match="labelled"):
    cljax.learners.get("slda", num_classes=10, base=_Base(xtr[:5], np.full(5, -1)))


def test_fixed_covariance_without_base_init_is_nearest_class_mean():
  """Why the base initialisation matters (issue 13, gap 1): streamed from empty, a *fixed* Σ
  stays 0, Λ = I/ε, and SLDA is exactly a Euclidean nearest-class-mean classifier (NumPy NCM
  here); fitted on a base set first, the OAS covariance makes it a real LDA, which on digits is
  more accurate than NCM."""
  xtr, ytr, xte, yte = _digits_class_incremental(7)
  first = ytr < 4
  plain = cljax.learners.get("slda", num_classes=10, covariance="fixed")
  sp, _ = _stream(plain, plain.init(None, _example(xtr)), xtr, ytr)
  sp, _ = plain.end_of_step(sp, None)
  assert float(np.abs(np.asarray(sp.scatter)).max()) == 0.0
  means = np.stack([xtr[ytr == c].mean(0) for c in range(10)])
  ncm = ((xte[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
  pred_plain = np.asarray(plain.predict(sp, xte)).argmax(1)
  np.testing.assert_array_equal(pred_plain, ncm)
  based = cljax.learners.get("slda", num_classes=10, covariance="fixed",
                             base=_Base(xtr[first], ytr[first]), skip_base_step=False)
  sb, _ = _stream(based, based.init(None, _example(xtr)), xtr[~first], ytr[~first])
  pred_based = np.asarray(based.predict(sb, xte)).argmax(1)
  acc_ncm, acc_based = (ncm == yte).mean(), (pred_based == yte).mean()
  print(f"digits, fixed Σ: without base init (= NCM) {acc_ncm:.3f}, with base init {acc_based:.3f}")
  assert (pred_based != ncm).mean() > 0.02 and acc_based > acc_ncm + 0.02


def test_backbone_inside_jit_equals_precomputed_features():
  rng = np.random.default_rng(2)
  proj = jnp.asarray(rng.normal(size=(2 * 3 * 4, 16)).astype(np.float32) / 5.0)

  def backbone(x):  # frozen, parameters closed over
    return jnp.tanh(x.reshape(x.shape[0], -1) @ proj)

  x = rng.normal(size=(130, 2, 3, 4)).astype(np.float32)
  y = rng.integers(0, 7, 130).astype(np.int32)
  with_bb = cljax.learners.get("slda", num_classes=7, backbone=backbone)
  plain = cljax.learners.get("slda", num_classes=7)
  feats = np.asarray(backbone(jnp.asarray(x)))
  sa = with_bb.init(None, _example(x))
  assert sa.means.shape == (7, 16)  # feature_dim inferred through the backbone
  sa, _ = _stream(with_bb, sa, x, y)
  sb, _ = _stream(plain, plain.init(None, _example(feats)), feats, y)
  np.testing.assert_allclose(np.asarray(sa.scatter), np.asarray(sb.scatter), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(with_bb.predict(sa, x)), np.asarray(plain.predict(sb, feats)),
                             rtol=1e-4, atol=1e-3)
  fb = slda_lib.fit_base(sa, x, y, backbone=backbone)
  np.testing.assert_allclose(np.asarray(fb.means), np.asarray(sb.means), rtol=1e-5, atol=1e-6)


def test_refresh_on_update_and_donation_match_default():
  xtr, ytr, xte, _ = _digits_class_incremental(3)
  lazy = cljax.learners.get("slda", num_classes=10)
  eager = cljax.learners.get("slda", num_classes=10, refresh_on_update=True)
  donating = cljax.learners.get("slda", num_classes=10, donate=True)
  s0 = lazy.init(None, _example(xtr))
  sl, _ = _stream(lazy, s0, xtr[:300], ytr[:300])
  se, _ = _stream(eager, s0, xtr[:300], ytr[:300])
  sd, _ = _stream(donating, jax.tree.map(jnp.copy, s0), xtr[:300], ytr[:300])
  assert bool(sl.stale) and not bool(se.stale)
  same(np.asarray(lazy.predict(sl, xte)), np.asarray(eager.predict(se, xte)))
  jax.tree.map(same, jax.device_get(sd), jax.device_get(sl))


def test_checkpoint_mid_stream_resumes_identically(tmp_path, compiles):
  xtr, ytr, xte, _ = _digits_class_incremental(4)
  learner = cljax.learners.get("slda", num_classes=10)
  batches = list(_batches(xtr, ytr))
  half = len(batches) // 2
  # Restored arrays are committed to a device, and jit keys its cache on committed-ness: commit
  # the initial state too, or the first update after a resume compiles once more.
  state = jax.device_put(learner.init(None, _example(xtr)), jax.devices()[0])
  for b in batches[:half]:
    state, _ = learner.update(state, b, None)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "mid", state)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "mid", jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
  assert isinstance(restored, ops.SLDAState)
  uninterrupted, resumed = state, restored
  with compiles() as n:  # the restored state does not recompile update
    for b in batches[half:]:
      uninterrupted, _ = learner.update(uninterrupted, b, None)
      resumed, _ = learner.update(resumed, b, None)
  assert n[0] == 0, n
  for s in (uninterrupted, resumed):
    assert int(s.n) == len(ytr)
  p_resumed = np.asarray(learner.predict(resumed, xte))
  with compiles() as n:  # nor predict: both states share one compiled program
    p_uninterrupted = np.asarray(learner.predict(uninterrupted, xte))
  assert n[0] == 0, n
  same(p_resumed, p_uninterrupted)
  jax.tree.map(same, jax.device_get(resumed), jax.device_get(uninterrupted))


_SHARDED = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import cljax.learners
    assert jax.device_count() == 8, jax.devices()
    data = np.load(sys.argv[1])
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    out = {}
    for rule in ("reference", "pooled"):
      learner = cljax.learners.get("slda", num_classes=10, update_rule=rule)
      state = jax.device_put(learner.init(None, {"x": data["x"][:64], "y": data["y"][:64]}), repl)
      for i in range(0, len(data["y"]), 64):
        batch = {k: jax.device_put(data[k][i:i + 64], rows) for k in ("x", "y", "valid", "labeled")}
        assert len(batch["x"].sharding.device_set) == 8
        state, _ = learner.update(state, batch, None)
      state, _ = learner.end_of_step(state, jax.random.key(0))
      xte = jax.device_put(data["xte"], rows)
      out[rule + "_logits"] = np.asarray(learner.predict(state, xte))
      for name in ("means", "counts", "scatter", "n"):
        out[rule + "_" + name] = np.asarray(getattr(state, name))
    np.savez(sys.argv[2], **out)
""")


@pytest.mark.slow  # an 8-device child process compiling from scratch
def test_eight_fake_devices_equal_one(tmp_path):
  xtr, ytr, xte, _ = _digits_class_incremental(5)
  xtr, ytr, xte = xtr[:1280], ytr[:1280], xte[:256]
  rng = np.random.default_rng(0)
  valid = rng.random(len(ytr)) > 0.1
  labeled = rng.random(len(ytr)) > 0.2
  np.savez(tmp_path / "in.npz", x=xtr, y=ytr, valid=valid, labeled=labeled, xte=xte)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", _SHARDED, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                 check=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                 timeout=300)
  got = np.load(tmp_path / "out.npz")
  for rule in ("reference", "pooled"):
    learner = cljax.learners.get("slda", num_classes=10, update_rule=rule)
    state = learner.init(None, {"x": xtr[:64], "y": ytr[:64]})
    for i in range(0, len(ytr), 64):
      b = {"x": xtr[i:i + 64], "y": ytr[i:i + 64], "valid": valid[i:i + 64],
           "labeled": labeled[i:i + 64]}
      state, _ = learner.update(state, b, None)
    state, _ = learner.end_of_step(state, jax.random.key(0))
    assert int(got[rule + "_n"]) == int(state.n) == (valid & labeled).sum()
    np.testing.assert_array_equal(got[rule + "_counts"], np.asarray(state.counts))
    for name in ("means", "scatter"):
      ref = np.asarray(getattr(state, name))
      np.testing.assert_allclose(got[rule + "_" + name], ref, rtol=1e-5,
                                 atol=1e-5 * np.abs(ref).max())
    logits = np.asarray(learner.predict(state, xte))
    np.testing.assert_allclose(got[rule + "_logits"], logits, rtol=1e-4,
                               atol=1e-4 * np.abs(logits).max())
    np.testing.assert_array_equal(got[rule + "_logits"].argmax(1), logits.argmax(1))
