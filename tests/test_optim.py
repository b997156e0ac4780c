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
