"""finetune / er / offline / Käding: streaming semantics, budget accounting, fixed shapes, data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
from cljax.learners import replay
from tests.helpers import arrays, run_tasks, task_accuracies

TASKS = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


@pytest.fixture(scope="module")
def mnist():
  ds = data.load("mnist5k")
  return arrays(ds) + arrays(ds, "test")


@pytest.fixture(scope="module")
def digits():
  return arrays(data.load("digits"))


@pytest.mark.slow
def test_er_beats_finetune_on_mnist5k_and_spends_exactly_the_budget(mnist):
  x, y, xt, yt = mnist
  kw = dict(num_classes=10, model="mlp", lr=2e-3, batch_size=50)
  ft = L.get("finetune", **kw)
  er = L.get("er", memory_size=300, **kw)
  st_ft, ft_spent = run_tasks(ft, x, y, TASKS, 60, bs=50)
  st_er, er_spent = run_tasks(er, x, y, TASKS, 60, bs=50)
  acc_ft = np.mean(task_accuracies(ft, st_ft, xt, yt, TASKS))
  acc_er = np.mean(task_accuracies(er, st_er, xt, yt, TASKS))
  assert acc_ft < 0.3, acc_ft
  assert acc_er > acc_ft + 0.4, (acc_er, acc_ft)
  assert ft_spent == er_spent == [60.0] * 5  # exactly the budget, never more
  assert int(st_er.mem.count) == 300


def test_online_passes_are_charged_by_rows(digits):
  x, y = digits
  # ER: each incoming batch of 32 is trained with 32 replayed rows: 64 rows = 2 passes of 32;
  # 2 iterations per batch = 4 passes per batch. finetune: 32 rows = 1 pass per iteration.
  er = L.get("er", num_classes=10, memory_size=50, iters_per_batch=2, batch_size=32)
  ft = L.get("finetune", num_classes=10, iters_per_batch=2, batch_size=32)
  b = next(data.array_batches(x, y, 32))
  for learner, want in ((er, 4.0), (ft, 2.0)):
    state = learner.init(jax.random.key(0), b)
    _, info = learner.update(state, b, jax.random.key(1))
    assert float(info.passes) == want
  # Over a budget the online steps are still taken and reported (the runner flags the step).
  _, spent = run_tasks(er, x, y, [[0, 1]], budget=10)
  n_batches = -(-int(np.isin(y, [0, 1]).sum()) // 32)
  assert spent == [4.0 * n_batches]


def test_er_memory_fills_on_arrival_and_replays_during_the_step(digits):
  x, y = digits
  learner = L.get("er", num_classes=10, memory_size=40, checked=False)
  batches = list(data.array_batches(x[:96], y[:96], 32))
  state = learner.init(jax.random.key(0), batches[0])
  state, _ = learner.update(state, batches[0], jax.random.key(1))
  assert int(state.mem.count) == 32 and int(state.mem.seen) == 32
  state, _ = learner.update(state, batches[1], jax.random.key(2))
  assert int(state.mem.count) == 40 and int(state.mem.seen) == 64  # a reservoir
  # the memory holds offered rows only: every stored (x, y) pair is one of the stream's
  held = np.asarray(state.mem.x).reshape(40, -1)
  stream = x[:64].reshape(64, -1)
  match = (held[:, None, :] == stream[None]).all(-1)
  assert match.any(1).all()
  np.testing.assert_array_equal(np.asarray(state.mem.y), y[:64][match.argmax(1)])


def test_er_update_alone_learns_new_classes_as_they_arrive(digits):
  # no end_of_step: the learner learns during the step, from each batch as it arrives
  x, y = digits
  learner = L.get("er", num_classes=10, iters_per_batch=2)
  cls = [0, 1, 2, 3, 4]
  m = np.isin(y, cls)
  state = learner.init(jax.random.key(0), {"x": x[:32], "y": y[:32]})
  for i, b in enumerate(data.array_batches(x[m], y[m], 32)):
    state, _ = learner.update(state, b, jax.random.key(i))
  acc = task_accuracies(learner, state, x, y, [cls])[0]
  assert acc > 0.8, acc


def test_no_recompiles_as_the_stream_grows(digits, compiles):
  x, y = digits
  learner = L.get("er", num_classes=10, memory_size=100, checked=False)
  run_tasks(learner, x, y, TASKS[:1], 6)  # compiles everything once
  with compiles() as n:
    run_tasks(learner, x, y, TASKS[1:3], [11, 3])  # other step sizes and budgets
  assert n[0] == 0, n


def test_unseen_classes_are_masked(digits):
  x, y = digits
  learner = L.get("finetune", num_classes=10)
  keep = np.flatnonzero(np.isin(y, [0, 1]))[:64]
  state = learner.init(jax.random.key(0), {"x": x[keep], "y": y[keep]})
  state, _ = learner.update(state, {"x": x[keep], "y": y[keep]}, jax.random.key(1))
  pred = np.asarray(learner.predict(state, x[:200])).argmax(1)
  assert set(np.unique(pred)) <= {0, 1}


@pytest.mark.slow
def test_offline_retrains_from_initialization_whatever_the_budget(mnist):
  x, y, xt, yt = mnist
  learner = L.get("offline", num_classes=10, batch_size=50, stream_size=4000,
                  epochs_per_step=3.0)
  assert not learner.budgeted
  state, spent = run_tasks(learner, x, y, TASKS, 10, bs=50)
  # 3 epochs over all data so far (800, 1600, ... examples), whatever the budget
  assert spent == [48.0, 96.0, 144.0, 192.0, 240.0]
  assert np.mean(task_accuracies(learner, state, xt, yt, TASKS)) > 0.85
  assert int(state.mem.count) == 4000


@pytest.mark.slow  # several seconds: the full suite runs it
def test_balanced_sampling_draws_half_from_the_step(digits):
  x, y = digits
  learner = L.get("er", num_classes=10, memory_size=50, sampling="balanced", iters_per_batch=0,
                  batch_size=8, max_step_size=64, checked=False)
  old = np.flatnonzero(y == 0)[:50]
  new = np.flatnonzero(y == 1)[:64]
  state = learner.init(jax.random.key(0), {"x": x[:8], "y": y[:8]})
  for i, b in enumerate(data.array_batches(x[old], y[old], 25)):
    state, _ = learner.update(state, b, jax.random.key(i))
  state, _ = learner.end_of_step(state, jax.random.key(5), 0)
  for i, b in enumerate(data.array_batches(x[new], y[new], 32)):
    state, _ = learner.update(state, b, jax.random.key(10 + i))
  # the memory now holds both classes; a balanced batch's first half comes from memory (mostly
  # class 0), its second half from the step's data (class 1 only)
  ys = []
  for k in range(20):
    _, yb, _ = jax.jit(lambda s, key: replay.training_batch(s, key, 8, "reservoir", "balanced"))(
        state, jax.random.key(k))
    ys.append(np.asarray(yb))
  ys = np.stack(ys)
  assert (ys[:, 4:] == 1).all()
  assert (ys[:, :4] == 0).mean() > 0.3


def test_bad_hparams_name_the_problem():
  with pytest.raises(ValueError, match="valid: .*memory_size"):
    L.get("er", num_classes=10, memory_sise=5)
  with pytest.raises(ValueError, match="unknown ER buffer 'fifo'"):
    L.get("er", num_classes=10, buffer="fifo")
  with pytest.raises(ValueError, match="unknown optimizer"):
    L.get("finetune", num_classes=10, optimizer="lbfgs")
  with pytest.raises(ValueError, match="valid learners: .*finetune"):
    L.get("icarl2", num_classes=10)
  with pytest.raises(ValueError, match="stream_size"):
    L.get("offline", num_classes=10)
  with pytest.raises(ValueError, match="unknown model 'resnet50'; valid models"):
    L.get("er", num_classes=10, model="resnet50")


def test_a_step_larger_than_the_step_store_warns(digits):
  x, y = digits
  learner = L.get("finetune", num_classes=10, max_step_size=40)
  state = learner.init(jax.random.key(0), {"x": x[:32], "y": y[:32]})
  for b in data.array_batches(x[:64], y[:64], 32):
    state, _ = learner.update(state, b, jax.random.key(0))
  with pytest.warns(UserWarning, match="24 examples of this step did not fit .*max_step_size=40"):
    learner.end_of_step(state, jax.random.key(1), 1)


# --- Käding et al. incremental fine-tuning: λ mixing, iterations per update, growing head ---


@pytest.mark.parametrize("n_old, n_new, lam, want_old", [
    (50, 20, 0.0, 0.0),   # λ = 0: only the new update set
    (50, 20, 1.0, 1.0),   # λ = 1: only old data
    (0, 20, 1.0, 0.0),    # no old data yet: the update set, whatever λ
    (50, 0, 0.0, 1.0),    # empty update set: old data
])
def test_sample_old_new_extremes(n_old, n_new, lam, want_old):
  from_old = replay.sample_old_new(jax.random.key(0), jnp.int32(n_old), jnp.int32(n_new), 512,
                                   lam)
  assert np.asarray(from_old).mean() == want_old


def test_sample_old_new_fraction():
  from_old = replay.sample_old_new(jax.random.key(1), jnp.int32(30), jnp.int32(10), 20000,
                                   jnp.float32(0.25))
  assert abs(np.asarray(from_old).mean() - 0.25) < 0.02


def _kading(**kw):
  base = dict(num_classes=10, model="mlp", batch_size=32, max_step_size=100, stream_size=1000,
              lr=0.05)
  return L.get("finetune_kading", **{**base, **kw})


def _one_batch(x, y, idx):
  return {"x": x[idx], "y": y[idx]}


def _filed(learner, state, x, y):
  """``state`` after a first time step of x, y that a ``pretrained_first_step`` learner files as
  earlier data without training (what a base-initialised network was trained on)."""
  state, _ = learner.update(state, {"x": x, "y": y}, jax.random.key(100))
  state, info = learner.end_of_step(state, jax.random.key(101), 5)
  assert float(info.passes) == 0.0 and np.isnan(float(info.loss))
  return state


def test_pretrained_first_step_files_the_base_set_without_training(digits):
  x, y = digits
  learner = _kading(old_fraction=0.5, iterations=10, pretrained_first_step=True)
  i0 = np.flatnonzero(np.isin(y, [0, 1]))[:90]
  state = learner.init(jax.random.key(0), {"x": x[:100], "y": y[:100]})
  params0 = jax.tree.map(np.asarray, state.params)
  state = _filed(learner, state, x[i0], y[i0])
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params0)):
    np.testing.assert_array_equal(np.asarray(a), b)  # not trained
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(state.seen)), [0, 1])
  # the base set is earlier data, in order; the step store is empty for the next step
  assert int(state.mem.count) == 90 and int(state.cur.count) == 0
  np.testing.assert_array_equal(np.asarray(state.mem.x)[:90], x[i0])
  # the next steps train as usual
  state, _ = learner.update(state, _one_batch(x, y, np.flatnonzero(y == 2)[:50]),
                            jax.random.key(1))
  state, info = learner.end_of_step(state, jax.random.key(2))
  assert float(info.passes) == 10
  with pytest.raises(ValueError, match="iters_per_batch=0"):
    L.get("finetune", num_classes=10, pretrained_first_step=True)


@pytest.mark.parametrize("lam, want", [(0.0, 1), (1.0, 0)])
def test_lambda_trains_on_the_chosen_source(digits, lam, want):
  # old data: class 0 only; update set: class 1 only. λ = 1 then sees only 0-labels, λ = 0 only
  # 1-labels, so the trained network predicts that one class for every input.
  x, y = digits
  learner = _kading(old_fraction=lam, iterations=60, pretrained_first_step=True)
  i0, i1 = np.flatnonzero(y == 0)[:80], np.flatnonzero(y == 1)[:80]
  state = learner.init(jax.random.key(0), {"x": x[:100], "y": y[:100]})
  state = _filed(learner, state, x[i0], y[i0])
  state, _ = learner.update(state, _one_batch(x, y, i1), jax.random.key(1))
  state, info = learner.end_of_step(state, jax.random.key(2))
  assert float(info.passes) == 60
  pred = np.asarray(learner.predict(state, x[np.r_[i0, i1]])).argmax(1)
  assert (pred == want).all(), np.bincount(pred)
  assert int(state.mem.count) == 160  # the update set became old data


@pytest.mark.slow  # several seconds of compiles: the fast tier stays under 2 min
def test_iterations_follow_the_data_seen(digits):
  x, y = digits
  # epochs over all data seen so far: 0.5 epoch, batch 32, 200 old + 100 per update
  learner = _kading(iterations="epochs", epochs_per_step=0.5, max_step_size=200,
                    pretrained_first_step=True)
  state = learner.init(jax.random.key(0), {"x": x[:100], "y": y[:100]})
  state = _filed(learner, state, x[:200], y[:200])
  passes = []
  for t in range(3):
    b = _one_batch(x, y, np.arange(200 + 100 * t, 300 + 100 * t))
    state, _ = learner.update(state, b, jax.random.key(t))
    state, info = learner.end_of_step(state, jax.random.key(10 + t), 1)  # budget ignored
    passes.append(float(info.passes))
  assert passes == [np.ceil(0.5 * n / 32) for n in (300, 400, 500)] == [5, 7, 8]
  # a constant number of iterations per update, whatever the budget or data size
  learner = _kading(iterations=3)
  state = learner.init(jax.random.key(0), {"x": x[:100], "y": y[:100]})
  for t in range(2):
    state, _ = learner.update(state, _one_batch(x, y, np.arange(100 * t, 100 * t + 100)),
                              jax.random.key(t))
    state, info = learner.end_of_step(state, jax.random.key(t), 50)
    assert float(info.passes) == 3
  # naive fine-tuning counts the data seen too (no memory needed)
  learner = L.get("finetune", num_classes=10, batch_size=25, max_step_size=100,
                  iterations="epochs", epochs_per_step=0.5, iters_per_batch=0)
  state = learner.init(jax.random.key(0), {"x": x[:100], "y": y[:100]})
  got = []
  for t in range(3):
    state, _ = learner.update(state, _one_batch(x, y, np.arange(100 * t, 100 * t + 100)),
                              jax.random.key(t))
    state, info = learner.end_of_step(state, jax.random.key(t))
    got.append(float(info.passes))
  assert got == [2, 4, 6]


def test_growing_head_keeps_unseen_rows_and_shapes(digits, compiles):
  x, y = digits
  learner = _kading(old_fraction=0.5, iterations=20)
  state = learner.init(jax.random.key(0), {"x": x[:100], "y": y[:100]})
  head0 = jax.tree.map(np.asarray, state.params["head"])
  shapes0 = jax.tree.map(lambda a: a.shape, state.params)
  lowered = []
  for t, classes in enumerate([[0, 1], [2], [3]]):
    idx = np.flatnonzero(np.isin(y, classes))[:100]
    with compiles() as n:
      state, _ = learner.update(state, _one_batch(x, y, idx), jax.random.key(t))
      state, _ = learner.end_of_step(state, jax.random.key(10 + t))
      pred = np.asarray(learner.predict(state, x[:300])).argmax(1)
    lowered.append(n[0])
    seen = sorted({c for cs in [[0, 1], [2], [3]][:t + 1] for c in cs})
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(state.seen)), seen)
    head = jax.tree.map(np.asarray, state.params["head"])
    unseen = [c for c in range(10) if c not in seen]
    # rows of classes not seen yet are exactly the initial rows (no gradient, no weight decay)
    np.testing.assert_array_equal(head["kernel"][:, unseen], head0["kernel"][:, unseen])
    np.testing.assert_array_equal(head["bias"][unseen], head0["bias"][unseen])
    # the row of a class that just arrived has been trained
    new = classes[-1]
    assert not np.array_equal(head["kernel"][:, new], head0["kernel"][:, new])
    assert set(pred) <= set(seen)  # predictions only among seen classes
    assert jax.tree.map(lambda a: a.shape, state.params) == shapes0
  assert lowered[1:] == [0, 0], lowered  # classes arrive without recompiling


def test_kading_defaults_and_validation():
  learner = L.get("finetune_kading", num_classes=10, stream_size=100, max_step_size=20)
  hp = learner.hparams
  assert (hp["optimizer"], hp["lr"], hp["momentum"], hp["weight_decay"], hp["batch_size"]) == \
      ("sgd", 1e-3, 0.9, 5e-4, 64)
  assert (hp["iterations"], hp["old_fraction"], hp["grow_head"]) == ("epochs", 0.75, True)
  assert hp["iters_per_batch"] == 0
  assert (hp["stream_size"], hp["mask_unseen"]) == (100, True)  # every setting is recorded
  # Käding's memory keeps all earlier data: a store of the whole stream beside the step's;
  # naive fine-tuning keeps the step's rows only
  ex = {"x": np.zeros((2, 3), np.float32), "y": np.zeros(2, np.int32)}
  state = learner.init(jax.random.key(0), ex)
  assert (state.mem.y.shape, state.cur.y.shape) == ((100,), (20,))
  assert float(state.old_fraction) == 0.75
  state = L.get("finetune", num_classes=10, max_step_size=20).init(jax.random.key(0), ex)
  assert state.mem is None and state.cur.y.shape == (20,)
  with pytest.raises(ValueError, match="old_fraction must be in"):
    L.get("finetune", num_classes=10, stream_size=10, old_fraction=1.5)
  with pytest.raises(ValueError, match="stream_size"):
    L.get("finetune", num_classes=10, old_fraction=0.5)
  with pytest.raises(ValueError, match="iterations must be"):
    L.get("finetune", num_classes=10, iterations="forever")
  with pytest.raises(ValueError, match="old_fraction"):
    L.get("er", num_classes=10, old_fraction=0.5)


@pytest.mark.slow
def test_kading_through_the_runner_with_base_init(tmp_path):
  # the experiment passes init_params (base_init), stream_size and max_step_size; the learner
  # keeps every earlier step and trains 1 epoch over all data seen per step, whatever the budget
  from cljax.app import experiment  # pylint: disable=import-outside-toplevel
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
