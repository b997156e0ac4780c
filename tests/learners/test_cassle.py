"""CaSSLe: the 4:1 budget split and the predictive distillation through Barlow Twins."""

import jax
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
from cljax.learners.cassle import ssl_phase
from tests.helpers import arrays, run_tasks

TINY_VIT = {"patch": 4, "depth": 1, "dim": 16, "dec_dim": 16}


def test_four_to_one_split():
  assert ssl_phase(80, 0.8, 1.0) == (64, 16)
  assert ssl_phase(80, 0.8, 4 / 3) == (48, 16)  # with the frozen teacher's forward
  assert ssl_phase(7, 0.8, 4 / 3) == (4, 1)
  assert ssl_phase(0, 0.8, 1.0) == (0, 0)


@pytest.mark.slow  # two budgeted steps of a tiny ViT (compile bound)
def test_teacher_from_the_second_step_and_budget():
  x, y = arrays(data.load("digits"))
  learner = L.get("cassle", num_classes=10, model="vit_micro", model_kwargs=TINY_VIT,
                  batch_size=16, chunk=4, memory_size=400, proj_dim=16, proj_hidden=16,
                  pred_hidden=16, checked=False)
  state, spent = run_tasks(learner, x, y, [[0, 1]], 20, bs=16)
  assert spent == [20.0] and bool(state.has_teacher)
  teacher = state.teacher
  for a, b in zip(jax.tree.leaves(teacher.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the trained encoder
  idx = np.flatnonzero(np.isin(y, [2, 3]))
  for s in range(0, len(idx), 16):
    state, _ = learner.update(state, {"x": x[idx[s:s + 16]], "y": y[idx[s:s + 16]]},
                              jax.random.key(s))
  state, info = learner.end_of_step(state, jax.random.key(9), 20)
  # 12 SSL steps of 4/3 passes (teacher on both views) + 4 fine-tuning steps
  assert float(info.extra["ssl_steps"]) == 12 and float(info.extra["finetune_steps"]) == 4
  assert float(info.passes) == pytest.approx(20.0)
  pred = np.asarray(learner.predict(state, x[:200])).argmax(1)
  assert set(pred) <= {0, 1, 2, 3}
