"""MAS: the label-free importance (its penalty and budget are EWC's, tests/learners/test_ewc.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from cljax import data
from cljax.models.pure import Net
from tests.helpers import arrays, importance_after_one_step


def test_importance_matches_definition():
  x, y = arrays(data.load("digits"))
  importance, p0 = importance_after_one_step("mas", x, y)
  net = Net.named("mlp", 10)
  g = [jax.grad(lambda p, i=i: jnp.sum(net.apply(p, x[i:i + 1]) ** 2))(p0) for i in range(8)]
  want = jax.tree.map(lambda *a: sum(jnp.abs(v) for v in a) / 8, *g)
  for a, b in zip(jax.tree.leaves(importance), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
