"""finetune / er / offline: protocol, budget accounting, fixed shapes, real-data behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax.learners as L
from cljax import data


def _batches(x, y, idx, bs):
  for s in range(0, len(idx), bs):
    b = idx[s:s + bs]
    pad = bs - len(b)
    yield {"x": x[np.r_[b, np.zeros(pad, int)]], "y": y[np.r_[b, np.zeros(pad, int)]],
           "valid": np.r_[np.ones(len(b), bool), np.zeros(pad, bool)],
           "labeled": np.ones(bs, bool)}


def _run_class_incremental(learner, ds, budget, bs=50):
  x = ds.train.batch(np.arange(len(ds.train)))
  y = ds.train.y
  state = learner.init(jax.random.key(0), {"x": x[:bs], "y": y[:bs]})
  spent = []
  for t in range(5):
    idx = np.random.default_rng(t).permutation(np.flatnonzero(np.isin(y, [2 * t, 2 * t + 1])))
    used = 0.0
    for i, b in enumerate(_batches(x, y, idx, bs)):
      state, m = learner.update(state, b, jax.random.key(100 * t + i))
      used += float(m["passes"])
    state, m = learner.end_of_step(state, jax.random.key(t), jnp.int32(budget - used))
    spent.append(used + float(m["passes"]))
  xt = ds.test.batch(np.arange(len(ds.test)))
  acc = float((np.asarray(learner.predict(state, xt)).argmax(1) == ds.test.y).mean())
  return state, acc, spent


@pytest.fixture(scope="module")
def mnist():
  return data.load("mnist5k")


def test_er_beats_finetune_on_mnist5k(mnist):
  kw = dict(num_classes=10, model="mlp", lr=2e-3, batch_size=50, max_step_size=800)
  _, ft, ft_spent = _run_class_incremental(L.get("finetune", **kw), mnist, 60)
  st, er, er_spent = _run_class_incremental(L.get("er", memory_size=300, **kw), mnist, 60)
  assert ft < 0.3, ft
  assert er > ft + 0.4, (er, ft)
  assert ft_spent == er_spent == [60.0] * 5  # exactly the budget, never more
  assert int(st["mem"]["count"]) == 300


def test_online_iterations_are_charged(mnist):
  learner = L.get("er", num_classes=10, model="mlp", batch_size=50, max_step_size=800,
                  iters_per_batch=2, memory_size=100)
  _, _, spent = _run_class_incremental(learner, mnist, 50)
  # 16 batches of 50 per step, 2 online passes each = 32 passes > budget 50 - 32 = 18 left
  assert spent == [50.0] * 5


def test_no_recompiles_as_the_stream_grows(mnist):
  learner = L.get("er", num_classes=10, model="mlp", batch_size=50, max_step_size=800,
                  memory_size=100, iters_per_batch=1)
  _run_class_incremental(learner, mnist, 20)
  assert learner.update._cache_size() == 1
  assert learner.predict._cache_size() == 1


def test_unseen_classes_are_masked():
  ds = data.load("digits")
  learner = L.get("finetune", num_classes=10, model="mlp", max_step_size=400)
  x, y = ds.train.batch(np.arange(64)), ds.train.y[:64]
  keep = np.isin(y, [0, 1])
  state = learner.init(jax.random.key(0), {"x": x, "y": y})
  state, _ = learner.update(state, {"x": x, "y": np.where(keep, y, 0), "valid": keep,
                                    "labeled": np.ones(64, bool)}, jax.random.key(1))
  pred = np.asarray(learner.predict(state, x)).argmax(1)
  assert set(np.unique(pred)) <= {0, 1}


def test_offline_retrains_from_initialization(mnist):
  learner = L.get("offline", num_classes=10, model="mlp", batch_size=50, max_step_size=800,
                  stream_size=4000, epochs_per_step=3.0)
  state, acc, spent = _run_class_incremental(learner, mnist, 10)
  # ignores the budget: 3 epochs over all data so far (800, 1600, ... examples)
  assert spent == [48.0, 96.0, 144.0, 192.0, 240.0]
  assert acc > 0.85, acc
  assert int(state["mem"]["count"]) == 4000


def test_bad_hparams_name_the_problem():
  with pytest.raises(ValueError, match="valid: .*memory_size"):
    L.get("er", num_classes=10, memory_sise=5)
  with pytest.raises(ValueError, match="unknown ER buffer 'fifo'"):
    L.get("er", num_classes=10, buffer="fifo")
  with pytest.raises(ValueError, match="unknown optimizer"):
    L.get("finetune", num_classes=10, optimizer="lbfgs")
  with pytest.raises(ValueError, match="valid learners: .*finetune"):
    L.get("icarl")
  with pytest.raises(ValueError, match="stream_size"):
    L.get("offline", num_classes=10)
