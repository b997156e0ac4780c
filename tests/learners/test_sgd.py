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


# --- Käding et al. incremental fine-tuning: λ mixing, iterations per update, growing head ---

from cljax.learners import sgd  # noqa: E402


def _one_batch(x, y, idx, bs):
  return next(iter(_batches(x, y, idx, bs)))


@pytest.mark.parametrize("n_old, n_new, lam, want_old", [
    (50, 20, 0.0, 0.0),   # λ = 0: only the new update set
    (50, 20, 1.0, 1.0),   # λ = 1: only old data
    (0, 20, 1.0, 0.0),    # no old data yet: the update set, whatever λ
    (50, 0, 0.0, 1.0),    # empty update set: old data
])
def test_sample_old_new_extremes(n_old, n_new, lam, want_old):
  from_old, idx = sgd.sample_old_new(jax.random.key(0), jnp.int32(n_old), jnp.int32(n_new),
                                     512, lam)
  from_old, idx = np.asarray(from_old), np.asarray(idx)
  assert from_old.mean() == want_old
  assert idx.dtype == np.int32 and idx.shape == (512,)
  assert (idx[from_old] < n_old).all() and (idx[~from_old] < max(n_new, 1)).all()
  assert idx.min() >= 0


def test_sample_old_new_fraction_and_coverage():
  from_old, idx = sgd.sample_old_new(jax.random.key(1), jnp.int32(30), jnp.int32(10), 20000,
                                     jnp.float32(0.25))
  from_old, idx = np.asarray(from_old), np.asarray(idx)
  assert abs(from_old.mean() - 0.25) < 0.02
  assert set(idx[from_old]) == set(range(30)) and set(idx[~from_old]) == set(range(10))


def _kading(**kw):
  base = dict(num_classes=10, model="mlp", batch_size=32, max_step_size=100, stream_size=1000,
              lr=0.05)
  return L.get("finetune_kading", **{**base, **kw})


@pytest.fixture(scope="module")
def digits():
  ds = data.load("digits")
  return ds.train.batch(np.arange(len(ds.train))), ds.train.y.astype(np.int32)


@pytest.mark.parametrize("lam, want", [(0.0, 1), (1.0, 0)])
def test_lambda_trains_on_the_chosen_source(digits, lam, want):
  # old data: class 0 only; update set: class 1 only. λ = 1 then sees only 0-labels, λ = 0 only
  # 1-labels, so the trained network predicts that one class for every input.
  x, y = digits
  learner = _kading(old_fraction=lam, iterations=60)
  i0, i1 = np.flatnonzero(y == 0)[:80], np.flatnonzero(y == 1)[:80]
  state = learner.init(jax.random.key(0), {"x": x[:100], "y": y[:100]})
  state = sgd.add_past_data(state, x[i0], y[i0])
  state, _ = learner.update(state, _one_batch(x, y, i1, 100), jax.random.key(1))
  state, m = learner.end_of_step(state, jax.random.key(2), jnp.int32(-1))
  assert float(m["passes"]) == 60
  pred = np.asarray(learner.predict(state, x[np.r_[i0, i1]])).argmax(1)
  assert (pred == want).all(), np.bincount(pred)
  assert int(state["mem"]["count"]) == 160  # the update set became old data


def test_iterations_follow_the_data_seen(digits):
  x, y = digits
  # epochs over all data seen so far: 0.5 epoch, batch 32, 200 old + 100 per update
  learner = _kading(iterations="epochs", epochs_per_step=0.5)
  state = learner.init(jax.random.key(0), {"x": x[:100], "y": y[:100]})
  state = sgd.add_past_data(state, x[:200], y[:200])
  passes = []
  for t in range(3):
    b = _one_batch(x, y, np.arange(200 + 100 * t, 300 + 100 * t), 100)
    state, _ = learner.update(state, b, jax.random.key(t))
    state, m = learner.end_of_step(state, jax.random.key(10 + t), jnp.int32(1))  # budget ignored
    passes.append(float(m["passes"]))
  assert passes == [np.ceil(0.5 * n / 32) for n in (300, 400, 500)] == [5, 7, 8]
  # a constant number of iterations per update, whatever the budget or data size
  learner = _kading(iterations=3)
  state = learner.init(jax.random.key(0), {"x": x[:100], "y": y[:100]})
  for t in range(2):
    state, _ = learner.update(state, _one_batch(x, y, np.arange(100 * t, 100 * t + 100), 100),
                              jax.random.key(t))
    state, m = learner.end_of_step(state, jax.random.key(t), jnp.int32(50))
    assert float(m["passes"]) == 3
  # naive fine-tuning counts the data seen too (no memory needed)
  learner = L.get("finetune", num_classes=10, model="mlp", batch_size=25, max_step_size=100,
                  iterations="epochs", epochs_per_step=0.5)
  state = learner.init(jax.random.key(0), {"x": x[:100], "y": y[:100]})
  got = []
  for t in range(3):
    state, _ = learner.update(state, _one_batch(x, y, np.arange(100 * t, 100 * t + 100), 100),
                              jax.random.key(t))
    state, m = learner.end_of_step(state, jax.random.key(t), jnp.int32(-1))
    got.append(float(m["passes"]))
  assert got == [2, 4, 6]


def test_growing_head_keeps_unseen_rows_and_shapes(digits):
  x, y = digits
  learner = _kading(old_fraction=0.5, iterations=20)
  state = learner.init(jax.random.key(0), {"x": x[:100], "y": y[:100]})
  head0 = jax.tree.map(np.asarray, state["params"]["head"])
  shapes0 = jax.tree.map(lambda a: a.shape, state["params"])
  compiled = []
  for t, classes in enumerate([[0, 1], [2], [3]]):
    idx = np.flatnonzero(np.isin(y, classes))[:100]
    state, _ = learner.update(state, _one_batch(x, y, idx, 100), jax.random.key(t))
    state, _ = learner.end_of_step(state, jax.random.key(10 + t), jnp.int32(-1))
    seen = sorted({c for cs in [[0, 1], [2], [3]][:t + 1] for c in cs})
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(state["seen"])), seen)
    head = jax.tree.map(np.asarray, state["params"]["head"])
    unseen = [c for c in range(10) if c not in seen]
    # rows of classes not seen yet are exactly the initial rows (no gradient, no weight decay)
    np.testing.assert_array_equal(head["kernel"][:, unseen], head0["kernel"][:, unseen])
    np.testing.assert_array_equal(head["bias"][unseen], head0["bias"][unseen])
    # the row of a class that just arrived has been trained
    new = classes[-1]
    assert not np.array_equal(head["kernel"][:, new], head0["kernel"][:, new])
    # predictions only among seen classes
    assert set(np.asarray(learner.predict(state, x[:300])).argmax(1)) <= set(seen)
    assert jax.tree.map(lambda a: a.shape, state["params"]) == shapes0
    compiled.append((learner.update._cache_size(), learner.predict._cache_size()))
  assert compiled == [(1, 1)] * 3  # classes arrive without recompiling


def test_kading_defaults_and_validation():
  learner = L.get("finetune_kading", num_classes=10, stream_size=100)
  hp = learner.hparams
  assert (hp["optimizer"], hp["lr"], hp["momentum"], hp["weight_decay"], hp["batch_size"]) == \
      ("sgd", 1e-3, 0.9, 5e-4, 64)
  assert (hp["iterations"], hp["old_fraction"], hp["grow_head"]) == ("epochs", 0.75, True)
  assert hp["memory"] == "past"
  # the plain learners keep their behaviour
  assert L.get("finetune", num_classes=10).hparams["memory"] == "none"
  with pytest.raises(ValueError, match="old_fraction must be in"):
    L.get("finetune", num_classes=10, stream_size=10, old_fraction=1.5)
  with pytest.raises(ValueError, match="stream_size"):
    L.get("finetune", num_classes=10, old_fraction=0.5)
  with pytest.raises(ValueError, match="iterations must be"):
    L.get("finetune", num_classes=10, iterations="forever")
  with pytest.raises(ValueError, match="old_fraction"):
    L.get("er", num_classes=10, old_fraction=0.5)


def test_kading_through_the_runner_with_base_init(tmp_path):
  # the runner passes init_params (base_init), stream_size and max_step_size; the learner keeps
  # every earlier step and trains 1 epoch over all data seen per step, whatever the budget
  from cljax.train import experiment  # pylint: disable=import-outside-toplevel
  c = experiment.base_config()
  c.dataset, c.model, c.learners, c.plots = "digits", "mlp", "finetune_kading", False
  c.stream.batch_size, c.stream.classes_per_step = 64, 2
  c.budget.passes_per_step, c.budget.batch_size = 5, 64  # the runner sets the SGD batch size
  c.base_init.classes, c.base_init.epochs = 4, 3.0
  c.hparams.finetune_kading = dict(lr=0.01)
  c.eval.every_examples = 10_000
  res = experiment.run_experiment(c, str(tmp_path))
  run = res["runs"]["finetune_kading"]
  seen = [s["examples_seen"] for s in run["steps"]]
  assert [s["budget_used"] for s in run["steps"]] == [float(np.ceil(n / 64)) for n in seen]
  assert run["final_accuracy"] > 0.8, run["final_accuracy"]
