"""LwF: the distillation loss by hand, exact budgets, and what distillation keeps (task-IL)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
from tests.helpers import arrays, run_tasks

TASKS = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


@pytest.fixture(scope="module")
def digits():
  ds = data.load("digits")
  return arrays(ds), arrays(ds, "test")


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _mammoth_smooth(p, temp):
  """mammoth ``models/lwf.py`` (aimagelab/mammoth at e75a491, lines 13-15): ``smooth``."""
  log = p ** (1 / temp)
  return log / log.sum(1, keepdims=True)


def _mammoth_modified_kl_div(old, new):
  """mammoth ``models/lwf.py`` (e75a491, lines 18-19): ``modified_kl_div``, a cross-entropy."""
  return -np.mean(np.sum(old * np.log(new), 1))


@pytest.mark.slow  # two steps of a small MLP on digits (~10 s each, compile bound)
@pytest.mark.parametrize("t_squared", [False, True], ids=["paper", "t_squared"])
def test_second_step_loss_is_ce_plus_distillation_by_hand(digits, t_squared):
  (x, y), _ = digits
  lam, temp, bs = 0.7, 2.0, 16
  learner = L.get("lwf", num_classes=10, lam=lam, temperature=temp, batch_size=bs, chunk=1,
                  max_step_size=200, **({"t_squared": True} if t_squared else {}))
  state, spent = run_tasks(learner, x, y, TASKS[:1], 10, bs=bs)
  assert spent == [10.0]  # no teacher at the first step: every pass trains
  teacher = state.params
  idx = np.random.default_rng(1).permutation(np.flatnonzero(np.isin(y, TASKS[1])))[:150]
  for s in range(0, 150, bs):
    state, _ = learner.update(state, {"x": x[idx[s:s + bs]], "y": y[idx[s:s + bs]]},
                              jax.random.key(s))
  # A student away from its teacher, so that the distillation term is not trivially 0.
  leaves, tree = jax.tree.flatten(teacher)
  noise = [0.05 * jax.random.normal(jax.random.key(i), a.shape) for i, a in enumerate(leaves)]
  student = jax.tree.unflatten(tree, [a + e for a, e in zip(leaves, noise)])
  state = state._replace(params=student)
  key = jax.random.key(5)
  fwd = np.ceil(150 / bs) / 3  # the teacher's forward over the step's rows
  state, info = learner.end_of_step(state, key, int(np.ceil(fwd)) + 1)
  assert float(info.passes) == pytest.approx(1 + fwd) and int(np.ceil(fwd)) + 1 >= 1 + fwd
  # The one SGD step's loss at the student's parameters, on rows drawn uniformly from the
  # step's 150 stored rows (the key of step 0 of the loop): Li and Hoiem's Eq. (2) + CE.
  rows = np.asarray(jax.random.randint(jax.random.fold_in(key, 0), (bs,), 0, 150))
  xb, yb = x[idx][rows], y[idx][rows]
  z, zt = (np.asarray(learner.predict(state._replace(params=p), xb), np.float64)
            for p in (student, teacher))
  seen = np.isin(np.arange(10), TASKS[0] + TASKS[1])
  old = np.isin(np.arange(10), TASKS[0])
  ce = -np.log(_softmax(z[:, seen])[np.arange(bs), np.searchsorted(np.flatnonzero(seen), yb)])
  # mammoth's term (models/lwf.py lines 76-77: α · modified_kl_div(smooth(softmax(old
  # logits), T), smooth(softmax(new logits), T)), no T²) minus the teacher's entropy, a constant
  # of the student: the KL of Li and Hoiem's Eq. (2), weighted by λ alone by default.
  q = _mammoth_smooth(_softmax(zt[:, old]), temp)
  xent = _mammoth_modified_kl_div(q, _mammoth_smooth(_softmax(z[:, old]), temp))
  kl = xent + np.mean(np.sum(q * np.log(q), 1))
  assert kl > 1e-4
  want = ce.mean() + lam * (temp ** 2 if t_squared else 1.0) * kl
  assert float(info.loss) == pytest.approx(want, rel=1e-4)


@pytest.mark.slow  # two 5-step runs on digits
def test_distillation_keeps_old_tasks_apart_unlike_finetuning(digits, compiles):
  (x, y), (xt, yt) = digits

  def task_il(learner, state):
    logits = np.asarray(learner.predict(state, xt))
    return [float((np.asarray(c)[logits[np.isin(yt, c)][:, c].argmax(1)]
                   == yt[np.isin(yt, c)]).mean()) for c in TASKS]

  lwf = L.get("lwf", num_classes=10, max_step_size=400, checked=False)
  ft = L.get("finetune", num_classes=10, max_step_size=400, iters_per_batch=0, checked=False)
  s_lwf, spent = run_tasks(lwf, x, y, TASKS, 60)
  assert all(59 <= s <= 60 for s in spent), spent
  s_ft, _ = run_tasks(ft, x, y, TASKS, 60)
  # Within-task accuracy of the first three tasks (task-incremental view): LwF's point.
  assert np.mean(task_il(lwf, s_lwf)[:3]) > np.mean(task_il(ft, s_ft)[:3]) + 0.15
  with compiles() as n:  # more steps, other budgets: nothing new to compile
    run_tasks(lwf, x, y, [[1, 2], [3]], [17, 5])
  assert n[0] == 0, n
