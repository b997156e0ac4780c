"""Gradient accumulation in the learners (``accumulate=k``, issue 21 item 8): k micro-batches
train like one batch k times larger, each still charged as a pass; DietCL's phases take the lr of
an optimizer step's first micro-batch, as its reference code does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax.learners as L
from cljax import data, optim
from cljax.learners import _phases
from cljax.train.loop import Loop, apply_updates


@pytest.fixture(scope="module")
def digits():
  ds = data.load("digits")
  return ds.train.batch(np.arange(len(ds.train))), np.asarray(ds.train.y, np.int32)


def _halves(x, y):
  """Two 10-row micro-batches holding the same 5 classes (the seen-class mask is the same), and
  their 20-row union."""
  rows = np.concatenate([np.flatnonzero(y == c)[:4] for c in range(5)])
  a, b = rows[0::2], rows[1::2]
  return {"x": x[a], "y": y[a]}, {"x": x[b], "y": y[b]}, {"x": x[rows], "y": y[rows]}


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_two_micro_batches_train_like_their_union(digits, optimizer):
  x, y = digits
  first, second, union = _halves(x, y)
  kw = dict(num_classes=10, optimizer=optimizer, lr=0.05)
  acc, one = L.get("finetune", accumulate=2, **kw), L.get("finetune", **kw)
  key = jax.random.key(0)
  start = acc.init(key, union)
  s_acc, i1 = acc.update(start, first, jax.random.key(1))
  _same(s_acc.params, start.params)  # the first micro-batch moves nothing
  s_acc, i2 = acc.update(s_acc, second, jax.random.key(2))
  s_one, i3 = one.update(one.init(key, union), union, jax.random.key(1))
  for a, b in zip(jax.tree.leaves(s_acc.params), jax.tree.leaves(s_one.params), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
  # Each micro-batch is charged the passes of its rows: together, the union's.
  assert float(i1.passes) + float(i2.passes) == pytest.approx(float(i3.passes))


def _same(a, b):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize("name", ["gdumb", "ewc", "offline"])
def test_step_end_training_moves_once_per_k_passes(digits, name):
  """With accumulate=3, a step end of 2 training passes leaves the step's starting model; 3
  move it."""
  x, y = digits
  _, _, union = _halves(x, y)  # 20 rows
  start = {"gdumb": "init_params", "offline": "init_params"}.get(name, "params")
  extra = 1 if name == "ewc" else 0  # ewc's importance pass

  def end_of_step(passes):
    kw = {"ewc": dict(importance_passes=1),
          # not budgeted: its epochs over the 20 stored rows set its passes (batch 32)
          "offline": dict(stream_size=100, epochs_per_step=passes * 32 / 20)}.get(name, {})
    learner = L.get(name, num_classes=10, accumulate=3, **kw)
    state = learner.init(jax.random.key(0), union)
    state, _ = learner.update(state, union, jax.random.key(1))
    out, info = learner.end_of_step(state, jax.random.key(2), passes + extra)
    assert float(info.passes) == passes + extra
    return getattr(state, start), out.params

  before, two = end_of_step(2)
  _same(two, before)
  before, three = end_of_step(3)
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(three), jax.tree.leaves(before)))


def test_phase_step_takes_the_lr_of_the_first_micro_batch():
  """DietCL's phase loop with accumulate=2 against a plain loop: AdamW on the mean gradient of
  each pair, at the half-cosine lr of the pair's first index (``trainer/base.py`` 223-231)."""
  rng = np.random.default_rng(0)
  targets = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)

  def loss_fn(params, state, key):
    t = targets[jax.random.randint(key, (), 0, 6)]
    return jnp.sum((params["w"] - t) ** 2), ()

  k = 2
  tx = optim.direction("adamw", weight_decay=0.05, betas=(0.9, 0.95), accumulate=k)
  loop = Loop(_phases.phase_step(loss_fn, tx, k), chunk=4, unroll=False)
  params = {"w": jnp.zeros(3, jnp.float32)}
  scales = {"w": jnp.float32(1.0)}
  passes, peak, floor = 10, 0.1, 1e-3
  key = jax.random.key(3)
  got, _, _ = _phases.run_phase(loop, jax.jit(tx.init), params, None, key, passes, peak, scales,
                                floor)

  plain = optim.direction("adamw", weight_decay=0.05, betas=(0.9, 0.95))
  p, opt = params, plain.init(params)
  for i0 in range(0, passes, k):
    grads = [jax.grad(lambda q, i=i: loss_fn(q, None, jax.random.fold_in(key, i))[0])(p)
             for i in range(i0, i0 + k)]
    g = jax.tree.map(lambda *a: sum(a) / k, *grads)
    lr = _phases.reference_lr(jnp.int32(i0), jnp.int32(passes), jnp.float32(peak),
                              jnp.float32(floor))
    p, opt = apply_updates(plain, p, opt, g, {"w": lr})
  np.testing.assert_allclose(np.asarray(got["w"]), np.asarray(p["w"]), rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # two ViT learners built twice: the full suite runs it
@pytest.mark.parametrize("name", ["dietcl", "joint"])
def test_vit_learners_scale_their_lr_by_the_effective_batch(digits, monkeypatch, name):
  """lr is per 256 examples of an optimizer step: batch_size x accumulate (the reference's
  ``compute_lr`` at its 1,024-example steps)."""
  x, y = digits
  peaks = []

  def spy(loop, opt_init, params, state, key, passes, lr_peak, *a, **kw):
    peaks.append(lr_peak)  # the phase itself is not run: only its lr is looked at
    return params, None, None

  monkeypatch.setattr(_phases, "run_phase", spy)
  for k in (1, 4):
    sizes = dict(stream_size=64) if name == "joint" else dict(max_step_size=64, memory_size=32)
    learner = L.get(name, num_classes=10, model="vit_micro", batch_size=8, accumulate=k,
                    lr=1e-3, model_kwargs=dict(depth=1, dim=16, dec_dim=16), **sizes)
    state = learner.init(jax.random.key(0), {"x": x[:8], "y": y[:8]})
    state, _ = learner.update(state, {"x": x[:16], "y": y[:16]}, jax.random.key(1))
    learner.end_of_step(state, jax.random.key(2), 8)
  first = peaks[0]
  assert first == pytest.approx(1e-3 * 8 / 256)
  assert peaks[len(peaks) // 2] == pytest.approx(4 * first)  # the same phase at accumulate=4
  with pytest.raises(ValueError, match="accumulate must be an integer >= 1"):
    L.get(name, num_classes=10, accumulate=0, **({"stream_size": 10} if name == "joint" else {}))
