"""Net: a network as pure functions; train/eval batch-norm semantics; warm starts checked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import models
from cljax.models.pure import Net

RESNET = dict(width=1 / 16, stem="small")


@pytest.fixture(scope="module")
def resnet():
  net = Net.named("resnet18", 3, **RESNET)
  return net, net.init(jax.random.key(0), (8, 8, 1))


def test_named_net_equals_the_module_it_wraps():
  net = Net.named("cnn", 4)
  params = net.init(jax.random.key(1), (8, 8, 1))
  module = models.create("cnn", (8, 8, 1), 4, jax.random.key(1))
  x = jax.random.normal(jax.random.key(2), (5, 8, 8, 1))
  np.testing.assert_allclose(np.asarray(net.apply(params, x)), np.asarray(module(x)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(net.features(params, x)),
                             np.asarray(module.features(x)), rtol=1e-6)
  # the graph comes from x's shape: another shape is another (cached) graph, same structure
  assert net.graph((8, 8, 1)) is net.graph((8, 8, 1))
  assert net.graph((16, 16, 1)) is not net.graph((8, 8, 1))


def test_eval_mode_rows_are_independent_and_train_mode_moves_statistics(resnet):
  net, params = resnet
  x = jax.random.normal(jax.random.key(3), (6, 8, 8, 1)) + 2.0
  apply = jax.jit(net.apply)
  np.testing.assert_allclose(np.asarray(apply(params, x[:1]))[0],
                             np.asarray(apply(params, x))[0], rtol=1e-4, atol=1e-5)
  _, moved = jax.jit(net.apply_train)(params, x, jnp.ones(6, bool))
  mask = net.stat_mask(params, (8, 8, 1))
  stats = [(a, b) for a, b, m in zip(jax.tree.leaves(params), jax.tree.leaves(moved),
                                     jax.tree.leaves(mask)) if m]
  weights = [(a, b) for a, b, m in zip(jax.tree.leaves(params), jax.tree.leaves(moved),
                                       jax.tree.leaves(mask)) if not m]
  assert stats and any(not np.allclose(a, b) for a, b in stats)  # running stats moved
  assert all(np.array_equal(a, b) for a, b in weights)          # weights untouched
  # with_stats takes the moved statistics and nothing else; take=False keeps the old ones
  new = net.with_stats(params, moved, (8, 8, 1))
  kept = net.with_stats(params, moved, (8, 8, 1), take=False)
  for (a, b, c, m) in zip(jax.tree.leaves(params), jax.tree.leaves(moved),
                          jax.tree.leaves(new), jax.tree.leaves(mask)):
    np.testing.assert_array_equal(c, b if m else a)
  for a, c in zip(jax.tree.leaves(params), jax.tree.leaves(kept)):
    np.testing.assert_array_equal(a, c)


def test_no_gradient_reaches_the_running_statistics(resnet):
  net, params = resnet
  x = jax.random.normal(jax.random.key(4), (4, 8, 8, 1))
  g = jax.jit(jax.grad(lambda p: net.apply_train(p, x)[0].sum()))(params)
  mask = net.stat_mask(params, (8, 8, 1))
  for gg, m in zip(jax.tree.leaves(g), jax.tree.leaves(mask)):
    if m:
      assert not np.any(np.asarray(gg))


def test_warm_start_is_checked():
  net = Net.named("mlp", 10, hidden=(16,))
  p = net.init(jax.random.key(0), (8, 8, 1))
  again = net.init(jax.random.key(1), (8, 8, 1), init_params=p)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="layers.0.kernel has shape"):
    net.init(jax.random.key(0), (4, 4, 1), init_params=p)
  with pytest.raises(ValueError, match="different parameter tree"):
    Net.named("cnn", 10).init(jax.random.key(0), (8, 8, 1), init_params=p)
  with pytest.raises(ValueError, match="unknown model 'resnet50'; valid models"):
    Net.named("resnet50", 10)


@pytest.mark.slow  # several seconds of compiles: the fast tier stays under 2 min
def test_fixed_net_and_method_calls():
  module = models.create("vit_micro", (8, 8, 1), 4, jax.random.key(0), patch=4)
  net = Net.of(module)
  params = net.fixed_params
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
  np.testing.assert_allclose(np.asarray(net.apply(params, x)), np.asarray(module(x)), rtol=1e-5)
  loss = net.call(params, x, "mae_loss", jax.random.key(2), 0.75)
  assert float(loss) == pytest.approx(float(module.mae_loss(x, jax.random.key(2), 0.75)),
                                      rel=1e-5)
