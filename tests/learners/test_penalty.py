"""EWC and MAS (the quadratic-penalty family): the penalty, exact budget with the importance pass
charged, each importance against its definition, less forgetting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
from cljax.learners import penalty
from cljax.models.pure import Net
from tests.helpers import arrays, run_tasks, task_accuracies


def importance_after_one_step(name, x, y):
  """A ``name`` (ewc or mas) learner's importance after one step of 8 examples with lr 0: returns
  (the importance tree, the parameters it was computed at)."""
  learner = L.get(name, num_classes=10, batch_size=8, max_step_size=8, importance_passes=1,
                  lr=0.0)
  b = {"x": x[:8], "y": y[:8]}
  state = learner.init(jax.random.key(0), b)
  p0 = state.params
  state, _ = learner.update(state, b, jax.random.key(1))
  state, info = learner.end_of_step(state, jax.random.key(2), 1)
  assert float(info.extra["importance_passes"]) == 1.0
  return state.importance, p0


@pytest.fixture(scope="module")
def digits():
  return arrays(data.load("digits"))


def test_penalty_vanishes_at_anchor_and_grows_away():
  p = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
  w = {"a": jnp.array([1.0, 0.5]), "b": jnp.array(2.0)}
  assert float(penalty.quadratic_penalty(p, p, w, 10.0)) == 0.0
  far = [float(penalty.quadratic_penalty(jax.tree.map(lambda v: v + d, p), p, w, 10.0))
         for d in (0.1, 0.2, 0.4)]
  assert far[1] == pytest.approx(4 * far[0], rel=1e-4)
  assert far[2] == pytest.approx(16 * far[0], rel=1e-4)
  assert far[0] == pytest.approx(0.175, rel=1e-4)  # ½ λ Σ Ω d² = 0.5 * 10 * 3.5 * 0.01


@pytest.mark.slow  # several seconds of compiles: the fast tier stays under 2 min
@pytest.mark.parametrize("name", ["ewc", "mas"])
def test_budget_exact_and_anchor(digits, name):
  x, y = digits
  learner = L.get(name, num_classes=10, batch_size=32, importance_passes=3)
  state, spent = run_tasks(learner, x, y, [[0, 1], [2, 3]], 13)
  assert spent == [13.0, 13.0]  # 10 training passes + 3 importance passes, never more
  imp = state.importance
  assert all(bool(jnp.all(v >= 0)) for v in jax.tree.leaves(imp))
  assert sum(float(jnp.sum(v)) for v in jax.tree.leaves(imp)) > 0
  # the anchor is the parameters after the last step: no penalty there, some away from it
  assert float(penalty.quadratic_penalty(state.params, state.anchor, imp, 1.0)) == 0.0
  moved = jax.tree.map(lambda v: v + 0.01, state.params)
  assert float(penalty.quadratic_penalty(moved, state.anchor, imp, 1.0)) > 0.0
  # a budget below the importance pass: everything goes to importance, nothing to training
  _, spent = run_tasks(learner, x, y, [[0, 1]], 2)
  assert spent == [2.0]


def test_fisher_matches_its_definition(digits):
  x, y = digits
  importance, p0 = importance_after_one_step("ewc", x, y)
  net = Net.named("mlp", 10)
  g = [jax.grad(lambda p, i=i: jax.nn.log_softmax(net.apply(p, x[i:i + 1]))[0, y[i]])(p0)
       for i in range(8)]
  want = jax.tree.map(lambda *a: sum(v ** 2 for v in a) / 8, *g)
  for a, b in zip(jax.tree.leaves(importance), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_keeps_more_of_the_first_task_than_finetune(digits):
  x, y = digits
  kw = dict(num_classes=10, batch_size=32, lr=1e-3, iters_per_batch=0)
  tasks = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
  ft = L.get("finetune", **kw)
  kw.pop("iters_per_batch")
  ew = L.get("ewc", lam=1e4, importance_passes=8, **kw)
  acc_ft = task_accuracies(ft, run_tasks(ft, x, y, tasks, 40)[0], x, y, tasks)
  acc_ew = task_accuracies(ew, run_tasks(ew, x, y, tasks, 40)[0], x, y, tasks)
  assert acc_ew[1] > 0.5, acc_ew                    # still learns the new task
  assert acc_ew[0] > acc_ft[0] + 0.05, (acc_ew, acc_ft)  # forgets less of the old one


@pytest.mark.parametrize("name", ["ewc", "mas"])
def test_no_recompiles_across_steps_of_different_sizes_and_budgets(digits, compiles, name):
  x, y = digits
  learner = L.get(name, num_classes=10, batch_size=16, chunk=4, max_step_size=600,
                  importance_passes=2, checked=False)
  run_tasks(learner, x, y, [[0], [6]], [5, 0], bs=16)  # every piece compiles once
  with compiles() as n:
    _, spent = run_tasks(learner, x, y, [[1, 2, 3], [4, 5]], [11, 0], bs=16)
  assert spent == [11.0, 0.0]
  assert n[0] == 0, n


def test_mas_importance_matches_definition(digits):
  x, y = digits
  importance, p0 = importance_after_one_step("mas", x, y)
  net = Net.named("mlp", 10)
  g = [jax.grad(lambda p, i=i: jnp.sum(net.apply(p, x[i:i + 1]) ** 2))(p0) for i in range(8)]
  want = jax.tree.map(lambda *a: sum(jnp.abs(v) for v in a) / 8, *g)
  for a, b in zip(jax.tree.leaves(importance), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
