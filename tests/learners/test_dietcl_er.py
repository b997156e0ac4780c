"""er_diet: ER as DietCL's reference code runs it (wx-zhang/continual-learning-on-a-diet,
``trainer/base.py``), against the reference's rules written out here:

* ``compute_batch_size`` (``trainer/base.py`` lines 95-101, ``sampling: batchmix``): all current
  labels at the first task, else ``[batch_size // 2, batch_size // 2]`` current / buffer;
* ``get_and_update_buffer`` (``data.py`` lines 28-43): DietCL (``replay_before: True``) trains on
  a buffer that already holds the step's labels, ER (``replay_before: False``) on the buffer of
  the earlier steps, the step's labels entering it after training.
"""

import jax
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
from cljax.learners import _phases, dietcl
from cljax.ops.allocation import source_split

from tests.learners.test_dietcl import BS, TINY_VIT, _run


def reference_batch_sizes(batch_size: int, task: int) -> list:
  """``BaseTrainer.compute_batch_size`` with ``sampling='batchmix'`` and a buffer."""
  return [batch_size, 0] if task == 0 else [batch_size // 2, batch_size // 2]


@pytest.mark.parametrize("b", [24, 25, 64, 256])
def test_batch_split_is_the_references(b):
  nu, nl, nb = source_split(b, "paper", reconstruction=False)
  assert nu == 0 and nl + nb == b
  assert [nl, nb] == reference_batch_sizes(b, 1) or (b % 2 and [nl, nb - 1] ==
                                                     reference_batch_sizes(b, 1))


def _memory_at_training(monkeypatch, learner, ds, tasks):
  """Per step, the classes in the memory the joint phase trains on."""
  seen = []
  real = _phases.run_phase

  def spy(loop, opt_init, params, state, key, passes, *a, **kw):
    m = state.mem
    if passes and hasattr(state, "cur_l"):
      held = np.asarray(m.y)[: int(m.count)]
      seen.append((int(m.tasks), sorted(set(held.tolist()))))
    return real(loop, opt_init, params, state, key, passes, *a, **kw)

  monkeypatch.setattr(dietcl._phases, "run_phase", spy)
  state, metrics = _run(learner, ds, tasks, budget=4, label_rate=0.5)
  return seen, state, metrics


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


@pytest.mark.slow
def test_er_diet_trains_on_earlier_steps_then_files_the_step(monkeypatch, digits):
  tasks = [[0, 1], [2, 3], [4, 5]]
  kw = dict(num_classes=10, model="vit_micro", model_kwargs=TINY_VIT, batch_size=BS, lr=5e-3,
            max_step_size=400, memory_size=-1, stream_size=len(digits.train), layer_decay=1.0,
            chunk=4, flip=False)
  er = L.get("er_diet", **kw)
  seen, state, metrics = _memory_at_training(monkeypatch, er, digits, tasks)
  # One phase a step (the whole budget), the memory of the earlier steps only.
  assert [s[0] for s in seen] == [0, 1, 2]
  assert seen[0][1] == [] and seen[1][1] == [0, 1] and seen[2][1] == [0, 1, 2, 3]
  assert int(state.mem.tasks) == 3  # every step filed after training
  assert sorted(set(np.asarray(state.mem.y)[: int(state.mem.count)].tolist())) == list(range(6))
  assert [m["passes"] for m in metrics] == [4.0, 4.0, 4.0]
  assert all(m["buffer_passes"] == 0 and m["loss_r"] == 0 for m in metrics)
  assert metrics[0]["loss_b"] == 0 and metrics[1]["loss_b"] > 0  # no buffer at the first step
  # DietCL: the step's labels are in the memory while it trains (replay_before: True).
  diet = L.get("dietcl", **kw, allocation="paper", threshold=2, w_r=1.0)
  seen, _, _ = _memory_at_training(monkeypatch, diet, digits, tasks)
  assert [s[0] for s in seen[::2]] == [1, 2, 3]  # joint and buffer-only phase of every step
  assert seen[0][1] == [0, 1] and seen[2][1] == [0, 1, 2, 3]
