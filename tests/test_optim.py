"""Optimizer builders equal optax's own optimizers; decay masks; schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import optim

PARAMS = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
          "bn": {"scale": jnp.ones(2), "mean": jnp.full(2, 0.5), "var": jnp.full(2, 2.0)}}


def _grads(seed):
  return jax.tree.map(lambda p: jax.random.normal(jax.random.key(seed), p.shape), PARAMS)


@pytest.mark.parametrize("name, ref", [
    ("sgd", lambda lr, wd, mask: optax.chain(optax.add_decayed_weights(wd, mask),
                                             optax.sgd(lr, momentum=0.9))),
    ("adam", lambda lr, wd, mask: optax.chain(optax.add_decayed_weights(wd, mask),
                                              optax.adam(lr))),
    ("adamw", lambda lr, wd, mask: optax.adamw(lr, weight_decay=wd, mask=mask)),
])
def test_build_equals_optax(name, ref):
  tx = optim.build(name, 0.1, weight_decay=0.01)
  want = ref(0.1, 0.01, optim.not_stats)
  s1, s2, p1, p2 = tx.init(PARAMS), want.init(PARAMS), PARAMS, PARAMS
  for seed in range(3):
    u1, s1 = tx.update(_grads(seed), s1, p1)
    u2, s2 = want.update(_grads(seed), s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_decay_masks():
  m = optim.not_stats(PARAMS)
  assert m["bn"]["mean"] is False and m["bn"]["var"] is False and m["bn"]["scale"] is True
  vit = {"pos_embed": jnp.ones((1, 4, 2)), "blocks": {0: {"kernel": jnp.ones((2, 2)),
                                                          "bias": jnp.ones(2)}}}
  m = optim.matrices(vit)
  assert m["pos_embed"] is False
  assert bool(m["blocks"][0]["kernel"]) and not bool(m["blocks"][0]["bias"])


def test_step_schedule_values():
  s = optim.step_schedule(0.1, 100, (0.375, 0.75), 0.1)
  assert [float(s(i)) for i in (0, 37, 38, 74, 75, 99)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
  assert float(optim.step_schedule(0.5, 10)(9)) == 0.5
  with pytest.raises(ValueError, match="increasing fractions"):
    optim.step_schedule(0.1, 100, (0.8, 0.2))


def test_half_cosine_floor_and_layer_scales():
  assert float(optim.half_cosine(jnp.int32(0), jnp.int32(10))) == pytest.approx(1.0)
  assert float(optim.half_cosine(jnp.int32(10), jnp.int32(10))) == pytest.approx(0.0, abs=1e-7)
  assert float(optim.half_cosine(jnp.int32(10), jnp.int32(10), 0.05)) == pytest.approx(0.05)
  scales = optim.layer_scales({"a": jnp.ones(1), "b": jnp.ones(1)},
                              lambda names: {"a": 0, "b": 2}[names[0]], 2, 0.5)
  assert float(scales["a"]) == pytest.approx(0.125) and float(scales["b"]) == pytest.approx(0.5)


@pytest.mark.parametrize("name, ref", [
    ("momentum", lambda lr, wd, mask: optax.chain(optax.add_decayed_weights(wd, mask),
                                                  optax.sgd(lr, momentum=0.9))),
    ("rmsprop", lambda lr, wd, mask: optax.chain(optax.add_decayed_weights(wd, mask),
                                                 optax.rmsprop(lr))),
    ("adagrad", lambda lr, wd, mask: optax.chain(optax.add_decayed_weights(wd, mask),
                                                 optax.adagrad(lr))),
    ("lamb", lambda lr, wd, mask: optax.lamb(lr, weight_decay=wd, mask=mask)),
])
def test_new_names_equal_optax(name, ref):
  test_build_equals_optax(name, ref)


def test_unknown_optimizer_and_bad_settings_name_the_way_out():
  with pytest.raises(ValueError, match=r"unknown optimizer 'nadam'; valid: \['sgd', 'momentum', "
                                       r"'adam', 'adamw', 'rmsprop', 'adagrad', 'lamb'\]"):
    optim.build("nadam", 0.1)
  with pytest.raises(ValueError, match="'momentum' needs momentum > 0.*'sgd' with momentum=0"):
    optim.direction("momentum", momentum=0.0)
  for bad in (0, 2.0, True):
    with pytest.raises(ValueError, match="accumulate must be an integer >= 1"):
      optim.build("sgd", 0.1, accumulate=bad)


def _digits_problem():
  """A linear softmax classifier on 64 real digits (8 micro-batches of 8) and its loss."""
  from cljax import data  # pylint: disable=import-outside-toplevel
  ds = data.load("digits")
  x = jnp.asarray(ds.train.batch(np.arange(64)).reshape(64, 64))
  y = jnp.asarray(ds.train.y[:64])
  params = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}

  def loss(p, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(xb @ p["w"] + p["b"], yb).mean()
  return params, x.reshape(8, 8, 64), y.reshape(8, 8), jax.jit(jax.grad(loss))


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_accumulation_equals_a_plain_loop_over_the_mean_gradient(name):
  """accumulate=4 over 8 micro-batches: params move only at calls 4 and 8, each time exactly
  as the plain optimizer moves them with the mean of the 4 micro-batch gradients (the gradient
  of the batch of 32); here checked against that loop written out by hand. (Adam's eps is
  raised so that gradients of rounding-error size, ~1e-10 where micro-batch gradients cancel,
  are not blown up to ±lr by its normalisation: the two sums round differently.)"""
  params, xs, ys, grad = _digits_problem()
  eps = 1e-4 if name == "adam" else None
  tx = optim.build(name, 0.05, eps=eps, accumulate=4)
  plain = optim.build(name, 0.05, eps=eps)
  update, plain_update = jax.jit(tx.update), jax.jit(plain.update)
  p, s = params, tx.init(params)
  q, r = params, plain.init(params)
  for macro in range(2):
    g_sum = jax.tree.map(jnp.zeros_like, q)
    for i in range(4):
      mb = 4 * macro + i
      before = p
      u, s = update(grad(p, xs[mb], ys[mb]), s, p)
      p = optax.apply_updates(p, u)
      g_sum = jax.tree.map(jnp.add, g_sum, grad(q, xs[mb], ys[mb]))
      if i < 3:  # between optimizer steps nothing moves
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p),
                                                        jax.tree.leaves(before)))
    u, r = plain_update(jax.tree.map(lambda g: g / 4, g_sum), r, q)
    q = optax.apply_updates(q, u)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # the mean of 4 equal micro-batches' gradients is the gradient of their union
  flat = grad(params, xs[:4].reshape(32, 64), ys[:4].reshape(32))
  mean = jax.tree.map(lambda *g: sum(g) / 4, *[grad(params, xs[i], ys[i]) for i in range(4)])
  for a, b in zip(jax.tree.leaves(flat), jax.tree.leaves(mean)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(p["w"]).sum()) > 0  # it trained


def test_accumulation_of_a_direction():
  """accumulate on a direction (learners that scale by -lr themselves): zeros between steps."""
  tx = optim.direction("sgd", momentum=0.0, accumulate=2)
  s = tx.init(PARAMS)
  u, s = tx.update(_grads(0), s, PARAMS)
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(u))
  u, s = tx.update(_grads(1), s, PARAMS)
  want = jax.tree.map(lambda a, b: (a + b) / 2, _grads(0), _grads(1))
  for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
