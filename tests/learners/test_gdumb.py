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


@pytest.mark.slow
def test_reference_recipe_mixes_every_memory_batch(digits):
  """With the DietCL reference's recipe (Mixup/CutMix with label smoothing, as the DietCL config
  runs GDumb), one step's loss is the soft-target CE of the mixed memory batch, computed here
  from ``cljax.ops.mixup`` directly; the plain learner's is the hard-label CE."""
  from cljax.learners import _phases, gdumb as gdumb_mod
  from cljax.ops import buffers, mixup
  from cljax.ops.losses import cross_entropy, mask_logits
  x, y = digits
  kw = dict(num_classes=10, batch_size=16, memory_size=40, lr=0.0, optimizer="adamw")
  mixed_l = L.get("gdumb", **kw, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
  plain_l = L.get("gdumb", **kw)
  key = jax.random.key(3)
  for learner, mixed in ((mixed_l, True), (plain_l, False)):
    state = learner.init(key, {"x": x[:16], "y": y[:16]})
    state, _ = learner.update(state, {"x": x[:40], "y": y[:40]}, key)
    step_key = jax.random.fold_in(jax.random.key(9), 0)  # the Loop's key of step 0
    _, info = learner.end_of_step(state, jax.random.key(9), 1)
    seen = gdumb_mod.in_memory(state)
    net = gdumb_mod.Net.named("mlp", 10)
    if mixed:
      k_s, k_r = jax.random.split(step_key)
      s = buffers.get("greedy").sample(state.mem, k_s, 16)
      m = _phases.Recipe(0.8, 1.0, 1.0, 0.5, 0.1, False).batch(k_r, s.x, s.y, s.weight, seen)
      want = mixup.soft_cross_entropy(net.apply(state.params, m.x), m.targets, m.weight, seen)
      assert not np.allclose(np.asarray(m.targets).max(1), 1.0)  # soft targets
    else:
      s = buffers.get("greedy").sample(state.mem, step_key, 16)
      want = cross_entropy(mask_logits(net.apply(state.params, s.x), seen), s.y, s.weight)
    np.testing.assert_allclose(float(info.loss), float(want), rtol=1e-4)
