"""Fixed-capacity example buffers: reservoir, class-balanced, append."""

import jax
import jax.numpy as jnp
import numpy as np

from cljax.ops import buffers


def _fill(policy, ys, cap=20, k=5, seed=0):
  buf = buffers.init(cap, (2,), k)
  x = np.stack([np.arange(len(ys)), np.arange(len(ys))], 1).astype(np.float32)
  ins = jax.jit(lambda b, x, y, m, key: buffers.insert(b, x, y, m, key, policy))
  for s in range(0, len(ys), 10):
    sl = slice(s, s + 10)
    buf = ins(buf, x[sl], np.asarray(ys[sl], np.int32), np.ones(len(ys[sl]), bool),
              jax.random.key(seed * 1000 + s))
  return buf


def test_reservoir_keeps_capacity_and_consistent_counts():
  ys = np.random.default_rng(0).integers(0, 5, 200)
  buf = _fill("reservoir", ys)
  assert int(buf["count"]) == 20 and int(buf["seen"]) == 200
  held = np.asarray(buf["y"])
  np.testing.assert_array_equal(np.bincount(held, minlength=5), buf["class_count"])
  # stored x rows are the originals of the stored labels
  idx = np.asarray(buf["x"][:, 0]).astype(int)
  np.testing.assert_array_equal(ys[idx], held)


def test_reservoir_inclusion_is_uniform():
  x = np.stack([np.arange(100.0)] * 2, 1).astype(np.float32)
  y, m = np.zeros(100, np.int32), np.ones(100, bool)

  def one_run(key):
    return buffers.insert(buffers.init(20, (2,), 1), x, y, m, key, "reservoir")["x"][:, 0]

  held = np.asarray(jax.jit(jax.vmap(one_run))(jax.random.split(jax.random.key(0), 300)))
  counts = np.bincount(held.astype(int).ravel(), minlength=100)
  # each item is held with probability 20/100 -> 60 expected per item in 300 runs (sd ~7)
  assert counts.sum() == 300 * 20
  assert abs(counts[:50].mean() - 60) < 4 and abs(counts[50:].mean() - 60) < 4
  assert counts.min() > 30 and counts.max() < 95


def test_class_balanced_balances_an_imbalanced_stream():
  ys = np.r_[np.zeros(150, int), np.ones(30, int), np.full(20, 2)]
  buf = _fill("class_balanced", ys, cap=30, k=5)
  cc = np.asarray(buf["class_count"])
  assert cc.sum() == 30
  np.testing.assert_array_equal(cc[:3], [10, 10, 10])


def test_append_and_masks():
  buf = buffers.init(5, (1,), 3)
  buf = buffers.append(buf, jnp.arange(4.0)[:, None], jnp.array([0, 1, 2, 1]),
                       jnp.array([True, False, True, True]))
  assert int(buf["count"]) == 3
  np.testing.assert_array_equal(buf["y"][:3], [0, 2, 1])
  np.testing.assert_array_equal(buf["class_count"], [1, 1, 1])
  buf = buffers.append(buf, jnp.arange(4.0)[:, None], jnp.array([0, 0, 0, 0]), jnp.ones(4, bool))
  assert int(buf["count"]) == 5  # overflow dropped
  np.testing.assert_array_equal(buf["class_count"], [3, 1, 1])
  assert int(buffers.clear(buf)["count"]) == 0


def test_no_recompiles_while_filling():
  ins = jax.jit(lambda b, x, y, m, key: buffers.insert(b, x, y, m, key, "reservoir"))
  buf = buffers.init(8, (3,), 4)
  for s in range(6):
    buf = ins(buf, np.ones((4, 3), np.float32), np.full(4, s % 4, np.int32), np.ones(4, bool),
              jax.random.key(s))
  assert ins._cache_size() == 1
