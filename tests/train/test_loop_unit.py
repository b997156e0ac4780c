"""``Loop(unroll=True)`` compiles one step, whatever the chunk, and dispatches one call per step
(none past the last one): its compile time does not grow with the chunk (notes/startup.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.train.loop import Loop


@pytest.mark.parametrize("unroll,traces", [(True, 1), (False, 1)])
def test_the_step_is_traced_once(unroll, traces):
  seen = []

  def step(carry, data, key, i, stop):
    del key, stop
    seen.append(1)  # runs while tracing only
    return carry + data * i, jnp.stack([i]).astype(jnp.float32)

  loop = Loop(step, chunk=8, unroll=unroll)
  carry, sums = loop(jnp.float32(0), jnp.float32(2), jax.random.key(0), 13)
  carry, sums = loop(carry, jnp.float32(2), jax.random.key(0), 21)
  assert len(seen) == traces
  assert float(carry) == 2 * (sum(range(13)) + sum(range(21)))
  assert float(sums[0]) == sum(range(21))


def test_one_call_per_step_and_none_past_the_last():
  loop = Loop(lambda c, d, k, i, s: (c + 1, jnp.ones(1)), chunk=8, unroll=True)
  calls = []
  inner = loop.run_chunk
  loop.run_chunk = lambda *a: (calls.append(int(a[3])), inner(*a))[1]
  carry, sums = loop(jnp.float32(0), (), jax.random.key(0), 13)
  assert calls == list(range(13))
  assert float(carry) == 13 and float(sums[0]) == 13


def test_per_step_rows_reach_their_step():
  rows = np.arange(24, dtype=np.float32).reshape(12, 2)

  def step(carry, data, key, i, stop):
    del key, stop
    _, row = data
    return carry.at[i].set(row[1]), jnp.zeros(1)

  loop = Loop(step, chunk=4, unroll=True)
  carry, _ = loop(jnp.zeros(10), (), jax.random.key(0), 10,
                  per_step=lambda start: rows[start:start + 4])
  np.testing.assert_array_equal(np.asarray(carry), rows[:10, 1])
