"""The one training loop: chunked, masked steps equal a plain sequential loop; no recompiles."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import optim
from cljax.models.pure import Net
from cljax.progress import Reporter
from cljax.train.loop import Loop, apply_updates, classifier_step


def _step(carry, data, key, i, stop):
  """A toy optimizer step: carry += data * (i + 1) + noise(key); metric = [i, stop]."""
  noise = jax.random.normal(key, carry.shape)
  return carry + data * (i + 1) + 0.01 * noise, jnp.stack([i, stop]).astype(jnp.float32)


@pytest.mark.parametrize("unroll", [True, False])
@pytest.mark.parametrize("passes", [0, 1, 7, 8, 13])
def test_chunks_equal_a_sequential_loop(unroll, passes):
  loop = Loop(_step, chunk=4, unroll=unroll)
  key, data = jax.random.key(3), jnp.arange(3.0)
  carry, sums = loop(jnp.zeros(3), data, key, passes)
  want = jnp.zeros(3)
  for i in range(passes):  # the plain loop the chunks must reproduce
    want, _ = _step(want, data, jax.random.fold_in(key, i), jnp.int32(i), jnp.int32(passes))
  np.testing.assert_allclose(np.asarray(carry), np.asarray(want), rtol=1e-6)
  if passes == 0:
    assert sums is None
  else:  # masked steps add nothing to the metrics
    np.testing.assert_allclose(np.asarray(sums), [sum(range(passes)), passes * passes])


def test_per_step_rows_and_progress():
  seen, calls = [], []

  def step(carry, data, key, i, stop):
    del key, stop
    shared, row = data
    return carry + shared * row, row[None]

  rows = np.arange(10, dtype=np.float32)
  loop = Loop(step, chunk=3)
  carry, sums = loop(jnp.float32(0), jnp.float32(2.0), jax.random.key(0), 8,
                     per_step=lambda start: (seen.append(start), np.resize(
                         rows[start:start + 3], 3))[1],
                     progress=lambda done, total, s: calls.append((done, total)))
  assert seen == [0, 3, 6]
  assert float(carry) == pytest.approx(2.0 * sum(range(8)))
  assert float(sums[0]) == pytest.approx(sum(range(8)))
  assert calls == [(3, 8), (6, 8), (8, 8)]


def test_reporter_logs_long_loops_only():
  loop = Loop(_step, chunk=4)
  key, data = jax.random.key(0), jnp.arange(3.0)
  lines = []
  carry, _ = loop(jnp.zeros(3), data, key, 20)  # no progress: silent
  report = Reporter(lines.append, "[er] step 3", after_s=0.0, every_s=0.0)
  inside, _ = loop(jnp.zeros(3), data, key, 20, progress=report)
  n_long = len(lines)
  loop(jnp.zeros(3), data, key, 4, progress=report)  # one chunk: too short to report
  np.testing.assert_array_equal(np.asarray(inside), np.asarray(carry))  # logging changes nothing
  assert lines and all(l.startswith("[er] step 3 pass ") and "passes/s | ETA" in l for l in lines)
  assert lines[-1].startswith("[er] step 3 pass 20/20 ") and len(lines) <= 5, lines
  assert len(lines) == n_long
  quiet = []  # default: only loops running longer than 10 s
  loop(jnp.zeros(3), data, key, 20, progress=Reporter(quiet.append, "[x]"))
  assert not quiet


def test_no_recompile_whatever_the_number_of_passes(compiles):
  loop = Loop(_step, chunk=4)
  loop(jnp.zeros(3), jnp.ones(3), jax.random.key(0), 5)
  with compiles() as n:
    for passes in (1, 4, 9, 31):
      loop(jnp.zeros(3), jnp.ones(3), jax.random.key(1), passes)
  assert n[0] == 0, n


def test_apply_updates_with_a_direction_and_per_leaf_rates():
  params = {"a": jnp.ones(2), "b": jnp.ones(3)}
  grads = {"a": jnp.full(2, 2.0), "b": jnp.full(3, 1.0)}
  tx = optim.direction("sgd", momentum=0.0)
  p1, _ = apply_updates(tx, params, tx.init(params), grads, lr=0.5)
  np.testing.assert_allclose(p1["a"], [0.0, 0.0])
  p2, _ = apply_updates(tx, params, tx.init(params), grads, lr={"a": 0.1, "b": 1.0})
  np.testing.assert_allclose(p2["a"], [0.8, 0.8])
  np.testing.assert_allclose(p2["b"], [0.0, 0.0, 0.0])


@pytest.mark.slow  # several seconds of compiles: the fast tier stays under 2 min
def test_classifier_step_is_plain_sgd_on_a_model_without_batch_norm():
  net = Net.named("mlp", 3, hidden=(4,))
  params = net.init(jax.random.key(0), (5,))
  x = jax.random.normal(jax.random.key(1), (6, 5))
  y = jnp.array([0, 1, 2, 0, 1, 2])
  w = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
  tx = optim.build("sgd", 0.1, momentum=0.0)
  new, _, loss = classifier_step(
      net, tx, params, tx.init(params), x, w,
      lambda p, logits: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * w)
      / jnp.sum(w))

  def ref(p):  # the same loss by hand, padding rows (w = 0) left out
    logits = net.apply(p, x[:4])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y[:4]).mean()

  g = jax.grad(ref)(params)
  for a, b, gg in zip(jax.tree.leaves(new), jax.tree.leaves(params), jax.tree.leaves(g)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b - 0.1 * gg), rtol=1e-5, atol=1e-6)
  assert float(loss) == pytest.approx(float(ref(params)), rel=1e-5)
