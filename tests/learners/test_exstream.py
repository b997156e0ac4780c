"""Tests for cljax/learners/exstream.py on real data (sklearn digits) and for resumability."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import cljax.learners as learners

B = 10  # incoming examples per update


@functools.lru_cache(maxsize=None)
def _digits():
  """Class-incremental digits: tasks {0,1}, {2,3}, ..., {8,9}, shuffled within a task."""
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  y = y.astype(np.int32)
  xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
  rng = np.random.default_rng(0)
  order = np.concatenate(
      [rng.permutation(np.flatnonzero(ytr // 2 == t)) for t in range(5)])
  return xtr[order], ytr[order], xte, yte


def _batches(xs, ys, labeled_rate=1.0, seed=0):
  rng = np.random.default_rng(seed)
  for s in range(0, len(ys), B):
    e = min(s + B, len(ys))
    x = np.zeros((B, xs.shape[1]), np.float32)
    y = np.zeros(B, np.int32)
    valid = np.zeros(B, bool)
    x[:e - s], y[:e - s], valid[:e - s] = xs[s:e], ys[s:e], True
    yield {"x": x, "y": y, "valid": valid, "labeled": rng.random(B) < labeled_rate}


@functools.lru_cache(maxsize=None)
def _learner(**hparams):
  # Shared across tests: one jitted update per configuration, traced and compiled once.
  return learners.get("exstream", **hparams)


def _stream(learner, xs, ys, state=None, key=0, compiles=None, **kw):
  """Streams (xs, ys) in batches of B; returns (state, passes spent, compiles per update) (the
  last is None without the ``compiles`` fixture)."""
  if state is None:
    state = learner.init(jax.random.key(key), {"x": xs[:B], "y": ys[:B]})
  passes, counts = 0.0, None if compiles is None else []
  for t, batch in enumerate(_batches(xs, ys, **kw)):
    k = jax.random.fold_in(jax.random.key(key + 1), t)
    if compiles is None:
      state, info = learner.update(state, batch, k)
    else:
      with compiles() as n:
        state, info = learner.update(state, batch, k)
      counts.append(n[0])
    passes += float(info.passes)
  return state, passes, counts


def _accuracy(learner, state, x, y):
  return float((np.asarray(learner.predict(state, x)).argmax(-1) == y).mean())


def test_registered():
  assert "exstream" in learners.names()
  with pytest.raises(ValueError, match="valid"):
    learners.get("exstream", num_classes=3, buffer="birch")


def test_every_example_trains_and_is_kept_with_one_compile(compiles):
  # The bookkeeping of the digits test below on a fifth of the stream (all five tasks).
  xs, ys, _, _ = _digits()
  xs, ys = xs[::5], ys[::5]
  ex = _learner(num_classes=10, capacity=8)
  state, passes, counts = _stream(ex, xs, ys, compiles=compiles)
  # K*c = 80 < batch 100: one mini-batch per example once the buffer holds >= 2 items.
  assert passes == len(ys) - 1
  w = np.asarray(state.buffer.weights)
  np.testing.assert_array_equal(w.sum(1), np.bincount(ys, minlength=10))
  assert sum(counts[1:]) == 0, counts  # the buffer fills from empty inside one compiled update
  # Nothing is left to do at the end of a step, whatever the budget.
  for budget in (None, 0, 7):
    after, info = ex.end_of_step(state, jax.random.key(2), budget)
    assert float(info.passes) == 0.0
    jax.tree.map(np.testing.assert_array_equal, after, state)


@pytest.mark.slow  # the whole digits stream, an epoch over the buffer per example (~7-18 s)
def test_beats_fine_tuning_class_incremental_digits(compiles):
  xs, ys, xte, yte = _digits()
  ex = _learner(num_classes=10, capacity=8)
  ex_state, ex_passes, ex_compiles = _stream(ex, xs, ys, compiles=compiles)
  ft = _learner(num_classes=10, replay="none")
  ft_state, _, _ = _stream(ft, xs, ys)
  acc_ex = _accuracy(ex, ex_state, xte, yte)
  acc_ft = _accuracy(ft, ft_state, xte, yte)
  # Measured: ExStream ~0.9, fine-tuning ~0.25 (it predicts the last task's classes only).
  assert acc_ex > 0.75, acc_ex
  assert acc_ex - acc_ft > 0.4, (acc_ex, acc_ft)
  # K*c = 80 < batch 100: one mini-batch per example once the buffer holds >= 2 items.
  assert ex_passes == len(ys) - 1
  w = np.asarray(ex_state.buffer.weights)
  np.testing.assert_array_equal(w.sum(1), np.bincount(ys, minlength=10))
  # The buffer filled from empty to full inside one compiled function: nothing compiles after
  # the first update.
  assert sum(ex_compiles[1:]) == 0, ex_compiles


@pytest.mark.parametrize("hp", [
    dict(capacity=8),  # the configuration of the digits test: no new compile
    dict(capacity=4, buffer="reservoir", replay="sampled", head="linear", replay_size=16),
], ids=["exstream-full_epoch-mlp", "reservoir-sampled-linear"])
def test_resume_mid_stream_equals_uninterrupted(hp, tmp_path):
  xs, ys, _, _ = _digits()
  xs, ys = xs[::10][:120], ys[::10][:120]  # all five tasks, 120 examples
  learner = _learner(num_classes=10, **hp)
  full, _, _ = _stream(learner, xs, ys, labeled_rate=0.8)

  half = 60
  batches = list(_batches(xs, ys, labeled_rate=0.8))
  state = learner.init(jax.random.key(0), {"x": xs[:B], "y": ys[:B]})
  keys = [jax.random.fold_in(jax.random.key(1), t) for t in range(len(batches))]
  for t in range(half // B):
    state, _ = learner.update(state, batches[t], keys[t])
  # The whole state goes to host numpy (what a checkpoint holds) and through an orbax checkpoint
  # on disk; both round trips are exact, and the run continued from the restored state ends where
  # the uninterrupted run does.
  host = jax.device_get(state)
  assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(host))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "mid", state)
    ckptr.wait_until_finished()
    restored = ckptr.restore(tmp_path / "mid",
                             jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(restored)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, np.asarray(b))
  # Continue from host numpy re-uploaded: orbax returns committed arrays, which would cost one
  # more trace and compile of the same update for arrays already shown equal.
  resumed = jax.tree.map(jnp.asarray, host)
  for t in range(half // B, len(batches)):
    resumed, _ = learner.update(resumed, batches[t], keys[t])
  assert jax.tree.structure(resumed) == jax.tree.structure(full)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_masks_and_backbone():
  rng = np.random.default_rng(0)
  proj = jnp.asarray(rng.normal(size=(12, 6)).astype(np.float32))

  def backbone(x):  # frozen feature extractor [B, 3, 4] -> [B, 6]
    return jnp.tanh(x.reshape(x.shape[0], -1) @ proj)

  learner = learners.get("exstream", num_classes=3, capacity=2, head="linear", backbone=backbone,
                         batch_size=4)
  x = rng.normal(size=(B, 3, 4)).astype(np.float32)
  y = (np.arange(B) % 3).astype(np.int32)
  state = learner.init(jax.random.key(0), {"x": x, "y": y})
  assert state.buffer.centroids.shape == (3, 2, 6)
  # Padding rows and unlabelled rows change nothing and cost nothing.
  off = {"x": x, "y": y, "valid": np.zeros(B, bool), "labeled": np.ones(B, bool)}
  unl = {"x": x, "y": y, "valid": np.ones(B, bool), "labeled": np.zeros(B, bool)}
  for batch in (off, unl):
    new, info = learner.update(state, batch, jax.random.key(1))
    assert float(info.passes) == 0.0
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  labeled = np.arange(B) < 4
  batch = {"x": x, "y": y, "valid": np.ones(B, bool), "labeled": labeled}
  new, info = learner.update(state, batch, jax.random.key(1))
  # Rows 0..3 arrive one by one: epochs over 1 (skipped), 2, 3 and 4 items, each one mini-batch.
  assert float(info.passes) == 3.0
  assert int(info.extra["buffer_items"]) == 4
  assert learner.predict(new, x).shape == (B, 3)
