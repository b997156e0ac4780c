"""Helpers shared by the learner tests: a plain user loop over a class-incremental stream."""

import jax
import numpy as np

from cljax import data


def arrays(ds, split="train"):
  """(x [N, ...] float32, y [N] int32) of a ``cljax.data`` data set split."""
  src = getattr(ds, split)
  return src.batch(np.arange(len(src))), np.asarray(src.y, np.int32)


def run_tasks(learner, x, y, tasks, budget=None, bs=32, seed=0):
  """Drives ``learner`` over tasks (lists of classes) as a user's loop would: every batch of a
  task through ``update``, then ``end_of_step`` with what is left of ``budget`` (an int, one per
  task, or None for the learner's default).

  Returns (state, passes spent per task).
  """
  state = learner.init(jax.random.key(seed), {"x": x[:bs], "y": y[:bs]})
  budgets = budget if isinstance(budget, (list, tuple)) else [budget] * len(tasks)
  spent = []
  for t, cls in enumerate(tasks):
    idx = np.random.default_rng(seed + t).permutation(np.flatnonzero(np.isin(y, cls)))
    used = 0.0
    for i, b in enumerate(data.array_batches(x[idx], y[idx], bs)):
      state, info = learner.update(state, b, jax.random.key(1000 * t + i))
      used += float(info.passes)
    left = None if budgets[t] is None else max(int(budgets[t] - used), 0)
    state, info = learner.end_of_step(state, jax.random.fold_in(jax.random.key(seed), t), left)
    spent.append(used + float(info.passes))
  return state, spent


def task_accuracies(learner, state, x, y, tasks):
  """Accuracy of ``state`` on the examples of each task's classes."""
  pred = np.asarray(learner.predict(state, x)).argmax(1)
  return [float((pred == y)[np.isin(y, cls)].mean()) for cls in tasks]
