"""DualNet: DietCL's variable sampling against a hand-written loop, the reference's look-ahead
loop and KL to stored outputs against hand-written versions, and a budgeted run."""

import jax
import numpy as np
import pytest

import cljax.learners as L
from cljax import data
import jax.numpy as jnp

from cljax import optim
from cljax.learners.dualnet import iteration_kinds, kl_to_stored, lookahead, stored_outputs
from tests.helpers import arrays, run_tasks

TINY_VIT = {"patch": 4, "depth": 2, "dim": 16, "dec_dim": 16}


def test_sampling_matches_a_plain_loop():
  key = jax.random.key(3)
  draw = jax.jit(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))
  u = [float(draw(i)) for i in range(40)]
  for budget, has_labels, ssl, sup in ((40, True, 1, 1), (7, True, 1, 1), (40, False, 1, 1),
                                       (0, True, 1, 1), (40, True, 4, 2), (13, True, 4, 2)):
    kinds = iteration_kinds(key, budget, 0.5, has_labels, ssl, sup)
    # By hand: iteration i is labelled when its uniform draw is <= 0.5 (and labels exist);
    # labelled iterations cost ssl + sup passes (the SSL phase + supervised steps), unlabelled
    # ssl; stop before the budget would be exceeded.
    want, spent, i = [], 0, 0
    while True:
      lab = has_labels and u[i] <= 0.5
      if spent + ssl + sup * lab > budget:
        break
      want.append(lab)
      spent += ssl + sup * lab
      i += 1
    np.testing.assert_array_equal(kinds, np.asarray(want, bool))
  many = iteration_kinds(key, 4000, 0.5, True)
  assert abs(many.mean() - 0.5) < 0.05  # threshold 0.5: about half the iterations labelled
  assert iteration_kinds(key, 30, 1.0, True).all() and not iteration_kinds(key, 30, 0.0, True).any()


def test_lookahead_is_the_reference_loop():
  """phquang/DualNet ``model/semi_dualnet.py`` (at e96ea75) lines 179-194: for j in n_outer:
  weights_before; inner_steps x (Barlow Twins loss, backward, bt_opt.step()); then
  before + beta (after - before). bt_opt (line 80): torch SGD(lr 1e-3, momentum 0.9, weight
  decay 5e-4), never reset. Here by hand with torch's SGD rule (g += wd p; buf = m buf + g,
  buf = g at the first step; p -= lr buf) on a quadratic loss whose target changes per key."""
  n_outer, inner, beta, lr, mom, wd = 2, 2, 0.05, 1e-3, 0.9, 5e-4
  targets = np.random.default_rng(0).normal(size=(n_outer * inner, 3))
  p0 = np.array([1.0, -2.0, 0.5])

  def grad_fn(p, k):  # loss = ½‖p − target_k‖²
    t = jnp.asarray(targets)[k]
    return 0.5 * jnp.sum((p - t) ** 2), p - t

  tx = optim.build("sgd", lr, momentum=mom, weight_decay=wd)
  keys = jnp.arange(n_outer * inner).reshape(n_outer, inner)
  p_opt = jnp.asarray(p0, jnp.float32)
  got, _, losses = lookahead(p_opt, tx.init(p_opt), tx, grad_fn, keys, beta)
  p, buf, k = p0.copy(), None, 0
  for _ in range(n_outer):
    before = p.copy()
    for _ in range(inner):
      g = (p - targets[k]) + wd * p
      buf = g if buf is None else mom * buf + g
      p = p - lr * buf
      k += 1
    p = before + beta * (p - before)
  np.testing.assert_allclose(np.asarray(got), p, rtol=1e-5, atol=1e-7)
  assert losses.shape == (n_outer, inner)


def test_kl_to_stored_outputs_is_the_references_kldivloss():
  """semi_dualnet.py (e96ea75) line 166: at a task's end, target = softmax(out[:, task] / T);
  lines 211-213: pred = logits of the row's task's classes, loss3 = memory_strength ·
  nn.KLDivLoss()(log_softmax(pred / T), target), KLDivLoss's default 'mean' over every
  (row, class) element. By hand in NumPy, two tasks of 2 and 3 classes in one batch."""
  rng = np.random.default_rng(1)
  temp, k = 2.0, 6
  old = rng.normal(size=(4, k)).astype(np.float32) * 3
  new = rng.normal(size=(4, k)).astype(np.float32) * 3
  tasks = [[0, 1], [0, 1], [2, 3, 4], [2, 3, 4]]
  mask = np.zeros((4, k), bool)
  for r, t in enumerate(tasks):
    mask[r, t] = True

  def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  soft = np.concatenate([np.asarray(stored_outputs(old[r:r + 1], mask[r], temp))
                         for r in range(4)])
  terms = []
  for r, t in enumerate(tasks):
    target = softmax(old[r, t] / temp)
    np.testing.assert_allclose(soft[r, t], target, rtol=1e-5)
    logp = np.log(softmax(new[r, t] / temp))
    terms.extend(target * (np.log(target) - logp))
  want = np.mean(terms)
  got = float(kl_to_stored(new, soft, mask, np.ones(4, np.float32), temp))
  assert got == pytest.approx(want, rel=1e-5)
  # rows without a stored output (weight 0) leave the mean
  got2 = float(kl_to_stored(new, soft, mask, np.array([1, 1, 0, 0], np.float32), temp))
  assert got2 == pytest.approx(np.mean(terms[:4]), rel=1e-5)


@pytest.mark.slow  # two budgeted steps of a tiny ViT slow learner (compile bound)
def test_budgeted_steps_and_fast_predictions():
  x, y = arrays(data.load("digits"))
  learner = L.get("dualnet", num_classes=10, model="vit_micro", model_kwargs=TINY_VIT,
                  batch_size=16, chunk=4, memory_size=400, proj_dim=32, proj_hidden=32,
                  checked=False)
  state, spent = run_tasks(learner, x, y, [[0, 1], [2, 3]], [40, 30], bs=16)
  # Iterations of 4 passes (2 look-aheads x 2 SSL steps) or 6 (+ 2 supervised steps), then the
  # stored outputs' forward over the step's labelled rows at 1/3 pass per batch of 16.
  n0 = int(np.isin(y, [0, 1]).sum())
  for s, b in zip(spent, [40, 30]):
    m = round(3 * (s % 2))  # 4a + 6c passes are even: the rest is the forward's thirds
    assert s <= b and b - s < 6 + 1 and abs(3 * (s % 2) - m) < 1e-4, (s, b)
  f0 = np.ceil(n0 / 16) / 3
  assert any(spent[0] - f0 == 4 * a + 6 * c for a in range(11) for c in range(7)), spent
  assert int(state.soft_n) == int(state.mem.count)
  soft = np.asarray(state.soft)
  np.testing.assert_allclose(soft[:n0].sum(1), 1.0, rtol=1e-5)  # step 1: over classes 0, 1
  assert np.all(soft[:n0, 2:] == 0) and np.all(np.asarray(state.soft_mask)[:n0, :2])
  pred = np.asarray(learner.predict(state, x[:200])).argmax(1)
  assert set(pred) <= {0, 1, 2, 3}
