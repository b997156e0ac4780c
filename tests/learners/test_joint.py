"""joint: cumulative-budget accounting, restart from the initialization, beats finetune."""

import jax
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
from cljax.models.pure import Net

BS = 32
# A one-block ViT-micro (16 wide) for the bookkeeping tests: compile time dominates them on CPU.
TINY_VIT = dict(depth=1, dim=16, dec_dim=16)
TASKS = [[0, 1], [2, 3], [4, 5]]


def _run(learner, ds, budget, tasks=TASKS, label_rate=0.5, seed=0):
  """Class-incremental steps over ``tasks`` (``budget`` None: the learner's default); returns
  state, per-step metrics ({"passes", "loss", **info.extra}), test accuracy on their classes."""
  x, y = ds.train.batch(np.arange(len(ds.train))), np.asarray(ds.train.y, np.int32)
  rng = np.random.default_rng(seed)
  state = learner.init(jax.random.key(0), {"x": x[:BS], "y": y[:BS]})
  metrics = []
  for t, cls in enumerate(tasks):
    idx = rng.permutation(np.flatnonzero(np.isin(y, cls)))
    lab = rng.random(len(idx)) < label_rate
    used = 0.0
    for i, batch in enumerate(data.array_batches(x[idx], y[idx], BS, lab)):
      state, info = learner.update(state, batch, jax.random.key(100 * t + i))
      used += float(info.passes)
    state, info = learner.end_of_step(state, jax.random.key(t),
                                      None if budget is None else int(budget - used))
    metrics.append({k: float(v) for k, v in info.extra.items()}
                   | {"passes": float(info.passes), "loss": float(info.loss)})
  xt, yt = ds.test.batch(np.arange(len(ds.test))), ds.test.y
  sel = np.isin(yt, np.concatenate(tasks))
  acc = float((np.asarray(learner.predict(state, xt[sel])).argmax(1) == yt[sel]).mean())
  return state, metrics, acc


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


def _joint(**kw):
  kw = dict(num_classes=10, stream_size=1800, model="vit_micro", model_kwargs=TINY_VIT,
            batch_size=BS, lr=2e-3 * 256 / BS, layer_decay=1.0, chunk=8,
            epochs_per_step=0.25) | kw
  return L.get("joint", **kw)


@pytest.fixture(scope="module")
def joint():
  return _joint()  # one learner (one set of compiled programs) for the whole file


@pytest.mark.slow  # several seconds: the full suite runs it
def test_joint_spends_the_cumulative_budget_and_restarts(digits, joint):
  learner = joint
  assert learner.budgeted is False  # a reference: over a step's budget, not flagged
  state, m, _ = _run(learner, digits, 10)
  assert [r["passes"] for r in m] == [10.0, 20.0, 30.0]      # t·B, the runner's view
  assert [r["ssl_passes"] for r in m] == [8.0, 16.0, 24.0]   # 80 % MAE ...
  assert [r["finetune_passes"] for r in m] == [2.0, 4.0, 6.0]  # ... 20 % fine-tuning
  assert int(state.total_budget) == 30
  n_lab, n_unl = int(state.lab.count), int(state.unl.count)
  n_all = int(np.isin(digits.train.y, np.concatenate(TASKS)).sum())
  assert n_lab + n_unl == n_all and 0 < n_lab < n_all  # every row kept, split by label
  assert np.flatnonzero(np.asarray(state.seen)).tolist() == [0, 1, 2, 3, 4, 5]
  assert all(r["loss_r"] > 0 and np.isfinite(r["loss"]) for r in m)
  # A zero budget leaves exactly the initialization (restart, nothing spent).
  st0, m0, _ = _run(joint, digits, 0, TASKS[:1])
  assert m0[0]["passes"] == 0.0
  for a, b in zip(jax.tree.leaves(st0.params), jax.tree.leaves(st0.init_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_joint_default_budget_and_init_params(digits, joint):
  _, m, _ = _run(joint, digits, None, TASKS[:1])
  n = int(np.isin(digits.train.y, TASKS[0]).sum())
  assert m[0]["passes"] == np.ceil(0.25 * n / BS)
  params = Net.named("vit_micro", 10, **TINY_VIT).init(jax.random.key(5), (8, 8, 1))
  st, _, _ = _run(_joint(init_params=params), digits, 0, TASKS[:1])
  for a, b in zip(jax.tree.leaves(st.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="needs a ViT"):
    L.get("joint", num_classes=10, stream_size=10, model="cnn")
  with pytest.raises(ValueError, match="stream_size"):
    L.get("joint", num_classes=10)


@pytest.mark.slow
def test_joint_beats_finetune_on_real_digits(digits):
  # Without the reference's Mixup/CutMix and crops: on 8x8 digits they leave 40 passes nothing
  # to learn from (joint 0.162 vs finetune 0.167 with them; notes/fidelity.md measures the same
  # for DietCL). This pins the SSL-then-fine-tune mechanism, not the recipe.
  _, _, acc_joint = _run(_joint(model_kwargs=None, mixup_alpha=0.0, cutmix_alpha=0.0,
                                augment=False), digits, 40)  # the full ViT-micro
  _, _, acc_ft = _run(L.get("finetune", num_classes=10, model="vit_micro", batch_size=BS,
                            lr=2e-3, max_step_size=400), digits, 40)
  print(f"digits 3 steps x 40 passes, 50% labels: joint {acc_joint:.3f} finetune {acc_ft:.3f}")
  assert acc_joint > acc_ft + 0.1, (acc_joint, acc_ft)
