"""gdumb, ewc, mas: penalties, importance, exact budget accounting, greedy memory, real data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
from cljax.learners import gdumb, regularized
from cljax.ops import buffers


def _batches(x, y, idx, bs):
  for s in range(0, len(idx), bs):
    b = idx[s:s + bs]
    pad = bs - len(b)
    yield {"x": x[np.r_[b, np.zeros(pad, int)]], "y": y[np.r_[b, np.zeros(pad, int)]],
           "valid": np.r_[np.ones(len(b), bool), np.zeros(pad, bool)],
           "labeled": np.ones(bs, bool)}


def _run(learner, ds, budget, tasks, bs=32):
  """Class-incremental stream over ``tasks`` (lists of classes), ``budget`` passes per step (an
  int, or one per step); returns state, per-step spend, and test accuracy on each task after the
  last step."""
  x, y = ds.train.batch(np.arange(len(ds.train))), ds.train.y
  state = learner.init(jax.random.key(0), {"x": x[:bs], "y": y[:bs]})
  spent = []
  budgets = budget if isinstance(budget, (list, tuple)) else [budget] * len(tasks)
  for t, cls in enumerate(tasks):
    idx = np.random.default_rng(t).permutation(np.flatnonzero(np.isin(y, cls)))
    used = 0.0
    for i, b in enumerate(_batches(x, y, idx, bs)):
      state, m = learner.update(state, b, jax.random.key(100 * t + i))
      used += float(m["passes"])
    state, m = learner.end_of_step(state, jax.random.key(t), jnp.int32(budgets[t] - used))
    spent.append(used + float(m["passes"]))
  xt, yt = ds.test.batch(np.arange(len(ds.test))), ds.test.y
  pred = np.asarray(learner.predict(state, xt)).argmax(1)
  accs = [float((pred == yt)[np.isin(yt, cls)].mean()) for cls in tasks]
  return state, spent, accs


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


def test_penalty_vanishes_at_anchor_and_grows_away():
  p = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
  w = {"a": jnp.array([1.0, 0.5]), "b": jnp.array(2.0)}
  assert float(regularized.penalty(p, p, w, 10.0)) == 0.0
  far = [float(regularized.penalty(jax.tree.map(lambda v: v + d, p), p, w, 10.0))
         for d in (0.1, 0.2, 0.4)]
  assert far[0] > 0 and far[1] == pytest.approx(4 * far[0], rel=1e-4)
  assert far[2] == pytest.approx(16 * far[0], rel=1e-4)
  # ½ λ Σ Ω d² = 0.5 * 10 * (1 + 0.5 + 2) * 0.01
  assert far[0] == pytest.approx(0.175, rel=1e-4)


@pytest.mark.parametrize("name", ["ewc", "mas"])
def test_regularized_budget_exact_and_anchor(digits, name):
  learner = L.get(name, num_classes=10, model="mlp", batch_size=32, max_step_size=400,
                  importance_passes=3)
  state, spent, _ = _run(learner, digits, 13, [[0, 1], [2, 3]])
  assert spent == [13.0, 13.0]  # 10 training passes + 3 importance passes, never more
  # Anchor = the parameters after the last step, so the penalty is 0 there and > 0 away from it.
  imp = state["importance"]
  assert all(bool(jnp.all(v >= 0)) for v in jax.tree.leaves(imp))
  assert sum(float(jnp.sum(v)) for v in jax.tree.leaves(imp)) > 0
  assert float(regularized.penalty(state["params"], state["anchor"], imp, 1.0)) == 0.0
  moved = jax.tree.map(lambda v: v + 0.01, state["params"])
  assert float(regularized.penalty(moved, state["anchor"], imp, 1.0)) > 0.0
  # A budget below the importance pass: everything goes to importance, nothing to training.
  _, spent, _ = _run(learner, digits, 2, [[0, 1]])
  assert spent == [2.0]


def test_importance_matches_definition(digits):
  learner = L.get("mas", num_classes=10, model="mlp", batch_size=8, max_step_size=8,
                  importance_passes=1, lr=0.0)
  x, y = digits.train.batch(np.arange(8)), digits.train.y[:8]
  state = learner.init(jax.random.key(0), {"x": x, "y": y})
  p0 = state["params"]
  b = {"x": x, "y": y, "valid": np.ones(8, bool), "labeled": np.ones(8, bool)}
  state, _ = learner.update(state, b, jax.random.key(1))
  state, m = learner.end_of_step(state, jax.random.key(2), jnp.int32(1))
  assert float(m["importance_passes"]) == 1.0
  from cljax.learners import _common
  f = _common.pure_model("mlp", (8, 8, 1), 10, jax.random.key(0))
  g = [jax.grad(lambda p: jnp.sum(f.apply(p, x[i:i + 1]) ** 2))(p0) for i in range(8)]
  want = jax.tree.map(lambda *a: sum(jnp.abs(v) for v in a) / 8, *g)
  for a, b_ in zip(jax.tree.leaves(state["importance"]), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b_), rtol=1e-4, atol=1e-6)


def test_gdumb_memory_is_greedy_class_balanced():
  buf = buffers.init(12, (1,), 4)
  # 30 of class 0, then 6 of class 1, 2 of class 2, 20 of class 3.
  y = np.r_[np.zeros(30), np.ones(6), np.full(2, 2), np.full(20, 3)].astype(np.int32)
  buf = gdumb.greedy_insert(buf, jnp.asarray(y, jnp.float32)[:, None], jnp.asarray(y),
                            jnp.ones(len(y), bool), jax.random.key(0))
  counts = np.asarray(buf["class_count"])
  assert counts.sum() == 12 and int(buf["count"]) == 12
  np.testing.assert_array_equal(np.sort(counts), [2, 3, 3, 4])  # 2 of class 2 = all it had
  assert counts[2] == 2
  assert np.all(np.bincount(np.asarray(buf["y"]), minlength=4) == counts)


def test_gdumb_budget_exact_retrains_from_init_and_learns(digits):
  learner = L.get("gdumb", num_classes=10, model="mlp", batch_size=32, memory_size=300,
                  lr=2e-3)
  tasks = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
  state, spent, accs = _run(learner, digits, 60, tasks)
  assert spent == [60.0] * 5
  assert np.all(np.asarray(state["mem"]["class_count"]) == 30)  # 300 slots over 10 classes
  # Trained only on a balanced memory: no task is forgotten (class-incremental digits).
  assert min(accs) > 0.7, accs
  # A zero budget leaves the freshly re-initialised parameters.
  st0, spent0, _ = _run(learner, digits, 0, tasks[:1])
  assert spent0 == [0.0]
  for a, b in zip(jax.tree.leaves(st0["params"]), jax.tree.leaves(st0["init_params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_ewc_sanity_on_digits_keeps_more_of_the_first_task(digits):
  kw = dict(num_classes=10, model="mlp", batch_size=32, max_step_size=800, lr=1e-3)
  tasks = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
  _, _, ft = _run(L.get("finetune", **kw), digits, 40, tasks)
  _, _, ew = _run(L.get("ewc", lam=1e4, importance_passes=8, **kw), digits, 40, tasks)
  assert ew[1] > 0.5, ew                 # still learns the new task
  assert ew[0] > ft[0] + 0.05, (ew, ft)  # forgets less of the old one


@pytest.mark.parametrize("name", ["gdumb", "ewc", "mas"])
def test_no_recompiles_across_steps_of_different_sizes_and_budgets(digits, name):
  extra = dict(memory_size=100) if name == "gdumb" else dict(max_step_size=600,
                                                             importance_passes=2)
  learner = L.get(name, num_classes=10, model="mlp", batch_size=16, chunk=4, **extra)
  # Steps of 1, 3 and 2 classes (different sizes and batch counts), budgets 5, 11, 0 passes.
  _, spent, _ = _run(learner, digits, [5, 11, 0], [[0], [1, 2, 3], [4, 5]], bs=16)
  assert spent == [5.0, 11.0, 0.0]
  fns = {"update": learner.update, "predict": learner.predict, **learner.end_of_step.jitted}
  sizes = {k: f._cache_size() for k, f in fns.items()}  # pylint: disable=protected-access
  # 0 where a piece never ran (gdumb's reset always runs; nothing else may compile twice).
  assert all(v <= 1 for v in sizes.values()) and sizes["update"] == 1, sizes
  assert sizes["chunk"] == 1, sizes
