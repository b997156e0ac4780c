"""iCaRL: herding exemplars and NME prediction against NumPy, budgets, retention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
from cljax.models.pure import Net
from tests.helpers import arrays, run_tasks, task_accuracies
from tests.ops.test_herding import reference as herding_reference

TASKS = [[0, 1], [2, 3], [4, 5]]
MEM = 60


@pytest.fixture(scope="module")
def digits():
  ds = data.load("digits")
  return arrays(ds), arrays(ds, "test")


@pytest.fixture(scope="module")
def trained(digits):
  (x, y), _ = digits
  learner = L.get("icarl", num_classes=10, memory_size=MEM, batch_size=32, max_step_size=300,
                  checked=False)
  state, spent = run_tasks(learner, x, y, TASKS, 40)
  return learner, state, spent


@pytest.mark.slow  # three budgeted steps of iCaRL on digits (~20 s, compile bound)
def test_exemplars_are_herded_and_nme_predicts(digits, trained):
  (x, y), (xt, yt) = digits
  learner, state, spent = trained
  assert all(38 < s <= 40 for s in spent), spent  # forwards charged at 1/3 pass per batch
  mem = state.mem
  np.testing.assert_array_equal(np.asarray(mem.class_count)[:6], [MEM // 6] * 6)
  # The last step's exemplars: herding (Algorithm 4, by hand) on the final network's features
  # of the step's rows, in the order run_tasks fed them.
  net = Net.named("mlp", 10)
  idx = np.random.default_rng(2).permutation(np.flatnonzero(np.isin(y, TASKS[2])))
  feats = np.asarray(net.features(state.params, jnp.asarray(x[idx])), np.float64)
  want = herding_reference(feats, y[idx], np.ones(len(idx), bool), MEM // 6)
  held_x = np.asarray(mem.x)[:int(mem.count)]
  held_y = np.asarray(mem.y)[:int(mem.count)]
  for c in TASKS[2]:
    np.testing.assert_array_equal(held_x[held_y == c], x[idx][want[c]])
  # NME (Algorithm 1) by hand: normalised features, re-normalised exemplar means, nearest one.
  norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
  fm = norm(np.asarray(net.features(state.params, jnp.asarray(held_x)), np.float64))
  means = norm(np.stack([fm[held_y == c].mean(0) for c in range(6)]))
  ft = norm(np.asarray(net.features(state.params, jnp.asarray(xt)), np.float64))
  want_pred = ((ft[:, None] - means[None]) ** 2).sum(-1).argmin(1)
  got = np.asarray(learner.predict(state, xt)).argmax(1)
  assert (got == want_pred).mean() > 0.995


@pytest.mark.slow  # a second 3-step run (finetune) and a no-recompile run
def test_keeps_old_classes_unlike_finetuning(digits, trained, compiles):
  (x, y), (xt, yt) = digits
  learner, state, _ = trained
  ft = L.get("finetune", num_classes=10, max_step_size=300, iters_per_batch=0, checked=False)
  s_ft, _ = run_tasks(ft, x, y, TASKS, 40)
  acc = task_accuracies(learner, state, xt, yt, TASKS)
  assert min(acc) > 0.6 and np.mean(acc[:2]) > np.mean(task_accuracies(ft, s_ft, xt, yt,
                                                                      TASKS)[:2]) + 0.4
  with compiles() as n:
    run_tasks(learner, x, y, [[6], [7, 8]], [25, 13])
  assert n[0] == 0, n
