"""dietcl: the reference's lr schedule, step-0 split and task-balanced memory, exact budgets,
resume, a sparse-label real stream. (Mixup/CutMix and the soft CE: tests/ops/test_mixup.py; the
image crops: tests/ops/test_feature_aug.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
from cljax import learner as contract
from cljax.learners import _phases, dietcl

BS = 24
# A one-block ViT-micro (16 wide): these tests pin bookkeeping, not accuracy, and compile time
# dominates them on CPU.
TINY_VIT = dict(depth=1, dim=16, dec_dim=16)


def _stream(ds, tasks, label_rate, seed=0, bs=BS):
  """Class-incremental steps of fixed-size batches; a ``label_rate`` share of rows is labeled."""
  x, y = ds.train.batch(np.arange(len(ds.train))), np.asarray(ds.train.y, np.int32)
  rng = np.random.default_rng(seed)
  for cls in tasks:
    idx = rng.permutation(np.flatnonzero(np.isin(y, cls)))
    labeled = rng.random(len(idx)) < label_rate
    yield list(data.array_batches(x[idx], y[idx], bs, labeled))


def _run(learner, ds, tasks, budget, label_rate=0.3, state=None, first=0, bs=BS, seed=0):
  """Drives ``learner`` over ``tasks`` (budget None: the learner's default); ``seed`` draws the
  stream order, the labels and every key. Per step: {"spent", "passes", "loss", **info.extra}."""
  if state is None:
    x = ds.train.batch(np.arange(bs))
    state = learner.init(jax.random.key(seed),
                         {"x": x, "y": np.asarray(ds.train.y[:bs], np.int32)})
  metrics = []
  budgets = budget if isinstance(budget, (list, tuple)) else [budget] * len(tasks)
  for t, batches in enumerate(_stream(ds, tasks, label_rate, seed=seed, bs=bs)):
    if t < first:
      continue
    used = 0.0
    for i, b in enumerate(batches):
      state, info = learner.update(state, b, jax.random.key(1000 * t + i))
      used += float(info.passes)
    left = None if budgets[t] is None else int(budgets[t] - used)
    state, info = learner.end_of_step(state, jax.random.fold_in(jax.random.key(seed), t), left)
    metrics.append({k: float(v) for k, v in info.extra.items()}
                   | {"passes": float(info.passes), "loss": float(info.loss),
                      "spent": used + float(info.passes)})
  return state, metrics


def _micro(**kw):
  kw = dict(num_classes=10, model="vit_micro", model_kwargs=TINY_VIT, batch_size=BS, lr=5e-3,
            max_step_size=400, memory_size=60, w_r=1.0, layer_decay=1.0, chunk=4,
            flip=False) | kw
  return L.get("dietcl", **kw)


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


@pytest.fixture(scope="module")
def paper10(digits):
  """One ``paper`` learner with B̄ = 10 shared by the tests (one set of compiled programs); the
  reference's memory: every labelled row (``memory_size=-1``), tasks cut to min(current,
  previous)."""
  return _micro(allocation="paper", threshold=10, memory_size=-1,
                stream_size=len(digits.train))


def test_reference_lr_schedule():
  """``trainer/lr_sched.py`` lines 10-23 (no warmup), written out in NumPy: a half cosine from
  the peak down to min_lr, or to half the peak when the peak is below min_lr."""
  def adjust_learning_rate(cur_iter, total_iter, blr, min_lr):
    if blr < min_lr:
      min_lr = blr / 2
    return min_lr + (blr - min_lr) * 0.5 * (1. + np.cos(np.pi * cur_iter / total_iter))

  f = jax.jit(_phases.reference_lr)
  for peak, floor in ((4e-4, 5e-5), (4e-5, 5e-5), (1e-3, 0.0)):
    for i in (0, 1, 7, 19):
      got = float(f(jnp.int32(i), jnp.int32(20), jnp.float32(peak), jnp.float32(floor)))
      assert got == pytest.approx(adjust_learning_rate(i, 20, peak, floor), rel=1e-5)
  # The learner's defaults: the reference's 5e-5 at 1,024 examples, per 256 (lr's unit).
  assert _phases.MIN_LR == pytest.approx(1.25e-5)
  assert L.get("dietcl", num_classes=10).hparams["min_lr"] == _phases.MIN_LR


def test_host_side_allocation_and_split():
  assert dietcl.phase_passes(16, 0, "reference_code", 400) == (16, 0)  # all joint at step 0
  assert dietcl.phase_passes(16, 1, "reference_code", 400) == (13, 3)
  assert dietcl.phase_passes(16, 1, "paper", 10) == (10, 6)
  assert dietcl.phase_passes(6, 3, "paper", 10) == (6, 0)
  assert dietcl.source_split(256, "reference_code") == (102, 77, 77)
  assert dietcl.source_split(256, "paper") == (85, 85, 86)
  assert dietcl.source_split(48, "reference_code") == (19, 14, 15)  # int(0.4 B), rest halved
  with pytest.raises(ValueError, match="allocation"):
    L.get("dietcl", num_classes=10, allocation="greedy")
  with pytest.raises(ValueError, match="needs a ViT"):
    L.get("dietcl", num_classes=10, model="cnn")
  with pytest.raises(ValueError, match="batch_size"):
    L.get("dietcl", num_classes=10, batch_size=2)
  with pytest.raises(ValueError, match="lm_mask"):
    L.get("dietcl", num_classes=10, lm_mask="classes")
  # memory_size=-1 (the reference's replay_buffer_size -1): a memory of the whole stream.
  learner = L.get("dietcl", num_classes=10, stream_size=5000)
  example = {"x": np.zeros((2, 8, 8, 1), np.float32), "y": np.zeros((2,), np.int32)}
  shapes = jax.eval_shape(lambda k: learner.init(k, example), jax.random.key(0))
  assert shapes.mem.x.shape[0] == 5000
  with pytest.raises(ValueError, match="unknown hyper-parameter.*vit_kwargs"):
    L.get("dietcl", num_classes=10, vit_kwargs={"depth": 1})  # the old spelling is gone


@pytest.mark.slow  # several seconds: the full suite runs it
def test_budget_counts_exact_paper(digits, paper10):
  tasks = [[0, 1], [2, 3]]
  _, m = _run(paper10, digits, tasks, 16)
  assert [r["spent"] for r in m] == [16.0, 16.0]
  assert [(r["joint_passes"], r["buffer_passes"]) for r in m] == [(10, 6), (10, 6)]
  # The first step has no buffer: its joint batches give the buffer's rows to the current labels
  # (the reference's 102 / 154 / 0 at task 0), so L_b is 0 there and only there.
  assert m[0]["loss_b"] == 0.0 and m[1]["loss_b"] > 0.0
  assert m[0]["loss_m"] > 0.0 and m[0]["loss_buffer"] > 0.0
  _, m = _run(paper10, digits, tasks[:1], 0)
  assert m[0]["spent"] == 0.0
  # An invalid budget is one clear error at the boundary (the old -1 sentinel is gone).
  state = paper10.init(jax.random.key(0), {"x": digits.train.batch(np.arange(BS)),
                                           "y": np.asarray(digits.train.y[:BS], np.int32)})
  with pytest.raises(contract.BatchError, match="budget"):
    paper10.end_of_step(state, jax.random.key(0), -1)


def test_budget_counts_exact_reference_code(digits):
  # reference_code end to end on its first step (100 % joint: one phase's programs compile, ~8 s
  # cold, ~2 s from the compile cache); the 80/20 split of later steps is the host function
  # ``phase_passes`` (test_host_side_allocation_and_split).
  _, m = _run(_micro(allocation="reference_code"), digits, [[0, 1]], 16)
  assert [r["spent"] for r in m] == [16.0]
  assert [(r["joint_passes"], r["buffer_passes"]) for r in m] == [(16, 0)]


def test_default_budget_is_epochs_over_the_step(digits, paper10):
  _, m = _run(paper10, digits, [[0, 1]], None)
  n = int(np.isin(digits.train.y, [0, 1]).sum())
  assert m[0]["passes"] == np.ceil(1.0 * n / BS)  # epochs_per_step=1 over the step's rows
  assert m[0]["joint_passes"] == 10.0


def test_state_seen_mask_and_task_balanced_memory(digits, paper10):
  tasks = [[0, 1], [2, 3], [4]]
  state, m = _run(paper10, digits, tasks, 6)
  assert np.flatnonzero(np.asarray(state.seen)).tolist() == [0, 1, 2, 3, 4]
  assert int(state.step) == 3 and int(state.cur_l.count) == 0
  assert int(state.cur_u.count) == 0 and not np.any(np.asarray(state.step_cls))
  mem = state.mem
  task = np.asarray(mem.task)
  assert set(task[: int(mem.count)]) == {0, 1, 2} and int(mem.tasks) == 3
  assert np.all(np.asarray(mem.y)[task >= 0] < 5)
  np.testing.assert_array_equal(np.asarray(mem.y)[task == 2], 4)  # task ids follow the steps
  # One insert per step, every labelled row kept, each task cut to min(current, previous) as in
  # the reference's update_buffer (data.py lines 56-93): here the third step has fewest labels.
  labelled = [sum(int(b["labeled"].sum()) for b in batches)
              for batches in _stream(digits, tasks, 0.3)]
  mem_len = min(labelled)
  assert labelled[2] == mem_len < min(labelled[:2])
  np.testing.assert_array_equal(np.bincount(task[task >= 0], minlength=3), [mem_len] * 3)
  x = digits.test.batch(np.arange(50))
  assert set(np.asarray(paper10.predict(state, x)).argmax(1)) <= {0, 1, 2, 3, 4}
  assert all(np.isfinite(r["loss"]) and r["loss_r"] > 0 for r in m)


@pytest.mark.slow  # several seconds: the full suite runs it
def test_resume_mid_stream_equals_uninterrupted(digits, paper10, tmp_path):
  tasks = [[0, 1], [2, 3], [4, 5]]
  full, _ = _run(paper10, digits, tasks, 14)  # 10 joint + 4 buffer-only passes per step
  part, _ = _run(paper10, digits, tasks[:2], 14)
  np.savez(tmp_path / "state.npz", *jax.tree.leaves(jax.device_get(part)))
  # A fresh process would rebuild the learner and restore against a fresh init's structure.
  learner = _micro(allocation="paper", threshold=10)
  fresh = learner.init(jax.random.key(0), {"x": digits.train.batch(np.arange(BS)),
                                          "y": np.asarray(digits.train.y[:BS], np.int32)})
  loaded = np.load(tmp_path / "state.npz")
  restored = jax.tree.unflatten(jax.tree.structure(fresh),
                                [jnp.asarray(loaded[f"arr_{i}"]) for i in range(len(loaded.files))])
  resumed, _ = _run(learner, digits, tasks, 14, state=restored, first=2)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_recompiles_across_steps_of_different_sizes_and_budgets(digits, paper10, compiles):
  learner = paper10  # maybe run by other tests already: then still one program each
  _run(learner, digits, [[0], [6]], [14, 0])  # joint + buffer-only, nothing: compiles once
  # Steps of 3 and 2 classes (other sizes), budgets 3 and 11: joint-only, joint + buffer.
  with compiles() as n:
    _, m = _run(learner, digits, [[1, 2, 3], [4, 5]], [3, 11])
  assert [r["spent"] for r in m] == [3.0, 11.0]
  assert n[0] == 0, n


@pytest.mark.slow
def test_sparse_labels_dietcl_learns_and_the_reference_recipe_costs_it_here():
  """mnist5k 28x28 (patch 7), 3 class-incremental steps, 10 % labels, 80 passes of 48 per step.

  Same ViT-micro for all, same budget, same labels; ER trained at step ends only
  (``iters_per_batch=0``), DietCL as in ``experiments/configs/dietcl.py`` (B̄ = 20, buffer-only
  phase at the full lr, the reference's Mixup/CutMix + crops), and DietCL without that
  regularisation (``dietcl_sweep.ABLATIONS["dietcl_no_regularisation"]``). Mean test accuracy on
  classes 0-5 over 3 seeds.

  Before issue 13 this pinned "DietCL on par with ER" (within 0.05 over 5 seeds). With the
  reference's regularisation DietCL trails ER here (0.346 vs 0.553 over 5 seeds), as the seed
  study measures (notes/fidelity.md: the recipe costs it ~14 points on 28 px digits, the Table 2
  components are within noise). Pinned: DietCL learns well above the 1/6 of guessing among the
  seen classes, and removing the recipe helps it on these images.
  """
  ds = data.load("mnist5k")
  tasks = [[0, 1], [2, 3], [4, 5]]
  bs = 48
  common = dict(num_classes=10, model="vit_micro", model_kwargs={"patch": 7}, batch_size=bs,
                max_step_size=800, memory_size=200)
  xt, yt = ds.test.batch(np.arange(len(ds.test))), ds.test.y
  sel = yt < 6

  def acc(learner):
    out = []
    for seed in range(3):
      state, m = _run(learner, ds, tasks, 80, label_rate=0.1, bs=bs, seed=seed)
      assert [r["spent"] for r in m] == [80.0] * 3
      out.append(float((np.asarray(learner.predict(state, xt[sel])).argmax(1) == yt[sel]).mean()))
    return out

  lr = 1e-3 * 256 / bs
  hp = dict(lr=lr, min_lr=lr / 8, flip=False, w_r=1.0, layer_decay=1.0, threshold=20,
            buffer_lr_scale=1.0, **common)
  diet = acc(L.get("dietcl", **hp))
  plain = acc(L.get("dietcl", mixup_alpha=0.0, cutmix_alpha=0.0, augment=False, **hp))
  print(f"mnist5k 10% labels, 3 steps x 80 passes, 3 seeds: dietcl {np.round(diet, 3)} "
        f"without the recipe {np.round(plain, 3)}")
  assert np.mean(diet) > 0.25, diet
  assert np.mean(plain) > np.mean(diet) + 0.03, (plain, diet)
