"""GDumb: exact budget, retraining from the initialization on a greedy class-balanced memory."""

import jax
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
from tests.helpers import arrays, run_tasks, task_accuracies

TASKS = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


@pytest.fixture(scope="module")
def digits():
  return arrays(data.load("digits"))


def test_budget_exact_retrains_from_init_and_learns(digits):
  x, y = digits
  learner = L.get("gdumb", num_classes=10, batch_size=32, memory_size=300, lr=2e-3)
  state, spent = run_tasks(learner, x, y, TASKS, 60)
  assert spent == [60.0] * 5
  assert np.all(np.asarray(state.mem.class_count) == 30)  # 300 slots over 10 classes
  # Trained only on a balanced memory: no task is forgotten (class-incremental digits).
  assert min(task_accuracies(learner, state, x, y, TASKS)) > 0.7
  # A zero budget leaves the freshly re-initialised parameters.
  st0, spent0 = run_tasks(learner, x, y, TASKS[:1], 0)
  assert spent0 == [0.0]
  for a, b in zip(jax.tree.leaves(st0.params), jax.tree.leaves(st0.init_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_predicts_only_classes_in_memory(digits):
  x, y = digits
  learner = L.get("gdumb", num_classes=10, memory_size=50)
  state, _ = run_tasks(learner, x, y, [[3, 7]], 5)
  assert set(np.asarray(learner.predict(state, x[:200])).argmax(1)) <= {3, 7}


def test_no_recompiles_across_steps_of_different_sizes_and_budgets(digits, compiles):
  x, y = digits
  learner = L.get("gdumb", num_classes=10, batch_size=16, chunk=4, memory_size=100,
                  checked=False)
  run_tasks(learner, x, y, [[0], [6]], [5, 0], bs=16)  # every piece compiles once
  with compiles() as n:  # steps of 3 and 2 classes, budgets 11 and 0 passes
    _, spent = run_tasks(learner, x, y, [[1, 2, 3], [4, 5]], [11, 0], bs=16)
  assert spent == [11.0, 0.0]
  assert n[0] == 0, n
