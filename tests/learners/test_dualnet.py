"""DualNet: DietCL's variable sampling against a hand-written loop, and a budgeted run."""

import jax
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
from cljax.learners.dualnet import iteration_kinds
from tests.helpers import arrays, run_tasks

TINY_VIT = {"patch": 4, "depth": 2, "dim": 16, "dec_dim": 16}


def test_sampling_matches_a_plain_loop():
  key = jax.random.key(3)
  draw = jax.jit(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))
  u = [float(draw(i)) for i in range(40)]
  for budget, has_labels in ((40, True), (7, True), (40, False), (0, True)):
    kinds = iteration_kinds(key, budget, 0.5, has_labels)
    # By hand: iteration i is labelled when its uniform draw is <= 0.5 (and labels exist);
    # labelled iterations cost 2 passes (SSL + supervised), unlabelled 1; stop before the
    # budget would be exceeded.
    want, spent, i = [], 0, 0
    while True:
      lab = has_labels and u[i] <= 0.5
      if spent + 1 + lab > budget:
        break
      want.append(lab)
      spent += 1 + lab
      i += 1
    np.testing.assert_array_equal(kinds, np.asarray(want, bool))
  many = iteration_kinds(key, 4000, 0.5, True)
  assert abs(many.mean() - 0.5) < 0.05  # threshold 0.5: about half the iterations labelled
  assert iteration_kinds(key, 30, 1.0, True).all() and not iteration_kinds(key, 30, 0.0, True).any()


@pytest.mark.slow  # two budgeted steps of a tiny ViT slow learner (compile bound)
def test_budgeted_steps_and_fast_predictions():
  x, y = arrays(data.load("digits"))
  learner = L.get("dualnet", num_classes=10, model="vit_micro", model_kwargs=TINY_VIT,
                  batch_size=16, chunk=4, memory_size=400, proj_dim=32, proj_hidden=32,
                  checked=False)
  state, spent = run_tasks(learner, x, y, [[0, 1], [2, 3]], [21, 10], bs=16)
  assert spent[0] in (20.0, 21.0) and spent[1] in (9.0, 10.0)  # 1 or 2 passes per iteration
  pred = np.asarray(learner.predict(state, x[:200])).argmax(1)
  assert set(pred) <= {0, 1, 2, 3}
