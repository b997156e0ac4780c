"""Tests for the ncm learner: scikit-learn's NearestCentroid on real digits, cosine prototypes,
masks, no recompiles; and the 8-fake-device run of ncm, acil and ranpac against one device."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.neighbors import NearestCentroid

import cljax.learners
from cljax.learner import BatchError
from cljax.ops import analytic


def _digits(seed=0):
  """Real digits (64-d), a class-sorted train stream of 1,300 rows and 497 test rows."""
  x, y = load_digits(return_X_y=True)
  x, y = (x / 16).astype(np.float32), y.astype(np.int32)
  perm = np.random.default_rng(seed).permutation(len(y))
  tr, te = perm[:1300], perm[1300:]
  order = tr[np.argsort(y[tr], kind="stable")]
  return x[order], y[order], x[te], y[te]


def _stream(learner, state, x, y, sizes):
  """Feeds x, y through ``update`` in consecutive blocks of the given sizes (cycled)."""
  i, j = 0, 0
  while i < len(y):
    b = sizes[j % len(sizes)]
    state, _ = learner.update(state, {"x": x[i:i + b], "y": y[i:i + b]}, None)
    i, j = i + b, j + 1
  return state


def test_euclidean_equals_sklearn_nearest_centroid_on_digits():
  xtr, ytr, xte, yte = _digits()
  learner = cljax.learners.get("ncm", num_classes=10)
  state = learner.init(None, {"x": xtr[:1], "y": ytr[:1]})
  state = _stream(learner, state, xtr, ytr, [1, 7, 32, 64])  # uneven batches, class-sorted
  ref = NearestCentroid().fit(xtr, ytr)
  from cljax.learners import ncm as ncm_lib
  np.testing.assert_allclose(np.asarray(ncm_lib.means(state)), ref.centroids_, rtol=1e-5,
                             atol=1e-6)
  pred = np.asarray(learner.predict(state, xte)).argmax(1)
  np.testing.assert_array_equal(pred, ref.predict(xte))
  assert (pred == yte).mean() > 0.85


def test_cosine_is_simplecil_prototype_head_and_unseen_classes_score_minus_inf():
  xtr, ytr, xte, _ = _digits(1)
  learner = cljax.learners.get("ncm", num_classes=10, metric="cosine")
  state = learner.init(None, {"x": xtr[:16], "y": ytr[:16]})
  first = np.isin(ytr, [0, 1, 2])
  state = _stream(learner, state, xtr[first], ytr[first], [16])
  s = np.asarray(learner.predict(state, xte))
  assert np.isneginf(s[:, 3:]).all() and np.isfinite(s[:, :3]).all()
  # Independent reference: the prototypes as SimpleCIL builds them (class means of the task),
  # compared by cosine similarity.
  proto = np.stack([xtr[first][ytr[first] == c].mean(0) for c in range(3)]).astype(np.float64)
  cos = (xte / np.linalg.norm(xte, axis=1, keepdims=True)) @ (
      proto / np.linalg.norm(proto, axis=1, keepdims=True)).T
  np.testing.assert_allclose(s[:, :3], cos, rtol=1e-5, atol=1e-6)


def test_masked_rows_are_skipped_and_bad_settings_rejected():
  xtr, ytr, _, _ = _digits()
  learner = cljax.learners.get("ncm", num_classes=10)
  state = learner.init(None, {"x": xtr[:8], "y": ytr[:8]})
  valid = np.array([True, False] * 4)
  labeled = np.array([True, True, False, True] * 2)
  state, info = learner.update(state, {"x": xtr[:8], "y": ytr[:8], "valid": valid,
                                       "labeled": labeled}, None)
  keep = valid & labeled
  assert int(info.extra["examples"]) == keep.sum() == int(state.counts.sum())
  np.testing.assert_allclose(np.asarray(state.sums).sum(0), xtr[:8][keep].sum(0), rtol=1e-6)
  with pytest.raises(ValueError, match="metric"):
    cljax.learners.get("ncm", num_classes=10, metric="manhattan")
  with pytest.raises(BatchError, match="label 10"):
    learner.update(state, {"x": xtr[:2], "y": np.array([1, 10], np.int32)}, None)


def test_no_recompiles_as_the_stream_grows_and_backbone_inside_jit(compiles):
  xtr, ytr, xte, _ = _digits()
  proj = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
  backbone = lambda x: x @ proj
  learner = cljax.learners.get("ncm", num_classes=10, backbone=backbone, checked=False)
  plain = cljax.learners.get("ncm", num_classes=10, checked=False)
  state = learner.init(None, {"x": xtr[:32], "y": ytr[:32]})
  pstate = plain.init(None, {"x": xtr[:32] @ proj, "y": ytr[:32]})
  counts = []
  for i in range(0, 1280, 32):
    with compiles() as n:
      state, _ = learner.update(state, {"x": xtr[i:i + 32], "y": ytr[i:i + 32]}, None)
    counts.append(n[0])
    pstate, _ = plain.update(pstate, {"x": xtr[i:i + 32] @ proj, "y": ytr[i:i + 32]}, None)
  assert counts[0] >= 1 and counts[1:] == [0] * (len(counts) - 1), counts
  np.testing.assert_allclose(np.asarray(learner.predict(state, xte)),
                             np.asarray(plain.predict(pstate, xte @ proj)), rtol=1e-4, atol=1e-3)


def test_two_states_over_disjoint_rows_merge_by_adding():
  xtr, ytr, _, _ = _digits()
  learner = cljax.learners.get("ncm", num_classes=10)
  ex = {"x": xtr[:8], "y": ytr[:8]}
  half = np.random.default_rng(0).random(len(ytr)) < 0.5
  a = _stream(learner, learner.init(None, ex), xtr[half], ytr[half], [50])
  b = _stream(learner, learner.init(None, ex), xtr[~half], ytr[~half], [50])
  whole = _stream(learner, learner.init(None, ex), xtr, ytr, [50])
  merged = analytic.merge_sums(a, b)
  np.testing.assert_array_equal(np.asarray(merged.counts), np.asarray(whole.counts))
  np.testing.assert_allclose(np.asarray(merged.sums), np.asarray(whole.sums), rtol=1e-5)


_SHARDED = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import cljax.learners
    assert jax.device_count() == 8, jax.devices()
    data = np.load(sys.argv[1])
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    out = {}
    for name, kw in (("ncm", {}), ("acil", {"expansion_dim": 128}),
                     ("ranpac", {"projection_dim": 128})):
      learner = cljax.learners.get(name, num_classes=10, **kw)
      state = jax.device_put(learner.init(jax.random.key(0), {"x": data["x"][:64],
                                                              "y": data["y"][:64]}), repl)
      with jax.set_mesh(mesh):
        for i in range(0, len(data["y"]), 64):
          batch = {k: jax.device_put(data[k][i:i + 64], rows)
                   for k in ("x", "y", "valid", "labeled")}
          state, _ = learner.update(state, batch, None)
        state, _ = learner.end_of_step(state, jax.random.key(0))
        out[name] = np.asarray(learner.predict(state, jax.device_put(data["xte"], rows)))
      for f, a in state._asdict().items():
        if a is not None and f != "projection":
          out[name + "_" + f] = np.asarray(a)
    np.savez(sys.argv[2], **out)
""")


@pytest.mark.slow  # an 8-device child process compiling from scratch
def test_eight_fake_devices_equal_one(tmp_path):
  xtr, ytr, xte, _ = _digits(5)
  xtr, ytr, xte = xtr[:1280], ytr[:1280], xte[:256]
  rng = np.random.default_rng(0)
  valid, labeled = rng.random(len(ytr)) > 0.1, rng.random(len(ytr)) > 0.2
  np.savez(tmp_path / "in.npz", x=xtr, y=ytr, valid=valid, labeled=labeled, xte=xte)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  subprocess.run([sys.executable, "-c", _SHARDED, str(tmp_path / "in.npz"),
                  str(tmp_path / "out.npz")], check=True, env=env, cwd=root, timeout=600)
  got = np.load(tmp_path / "out.npz")
  for name, kw in (("ncm", {}), ("acil", {"expansion_dim": 128}),
                   ("ranpac", {"projection_dim": 128})):
    learner = cljax.learners.get(name, num_classes=10, **kw)
    state = learner.init(jax.random.key(0), {"x": xtr[:64], "y": ytr[:64]})
    for i in range(0, len(ytr), 64):
      state, _ = learner.update(state, {"x": xtr[i:i + 64], "y": ytr[i:i + 64],
                                        "valid": valid[i:i + 64],
                                        "labeled": labeled[i:i + 64]}, None)
    state, _ = learner.end_of_step(state, jax.random.key(0))
    for f, a in state._asdict().items():
      if a is None or f == "projection":
        continue
      ref = np.asarray(a)
      if ref.dtype.kind in "iub":
        np.testing.assert_array_equal(got[name + "_" + f], ref, err_msg=f"{name}.{f}")
      else:
        np.testing.assert_allclose(got[name + "_" + f], ref, rtol=1e-4,
                                   atol=1e-5 * max(np.abs(ref).max(), 1e-30),
                                   err_msg=f"{name}.{f}")
    logits = np.asarray(learner.predict(state, xte))
    np.testing.assert_array_equal(got[name].argmax(1), logits.argmax(1))
