"""Tests for cljax/ops/buffers/largest_class.py: REMIND's buffer (evict from the largest class)."""

import collections

import jax
import jax.numpy as jnp
import numpy as np

from cljax.ops.buffers import largest_class
from tests.ops.buffers import common

NAME, CAP, K = "largest_class", 12, 4


@jax.jit
def _rank(key, n, size):
  """The policy's draw for stream position n: the victim's rank in [0, size) within its class."""
  return jax.random.randint(jax.random.fold_in(key, n), (), 0, jnp.maximum(size, 1))


def reference(key, ys, mask, cap, k):
  """Sequential REMIND buffer: the stream index held by each slot (-1 empty)."""
  slots, labels = -np.ones(cap, int), -np.ones(cap, int)
  cc = np.zeros(k, int)
  for n, t in enumerate(np.flatnonzero(mask)):
    count = int((slots >= 0).sum())
    if count < cap:
      slot = count
    else:
      big = int(np.argmax(cc))  # chosen before the new item is counted; lowest id on ties
      slot = np.flatnonzero(labels == big)[int(_rank(key, n, cc[big]))]
      cc[big] -= 1
    slots[slot], labels[slot] = t, ys[t]
    cc[ys[t]] += 1
  return slots


def test_matches_sequential_reference():
  xs, ys = common.stream(0, 120, K, probs=[0.55, 0.25, 0.15, 0.05])
  mask = np.random.default_rng(1).random(120) < 0.8
  state = common.check_batching_and_masks(NAME, CAP, K, xs, ys, mask)
  slots = reference(common.KEY, ys, mask, CAP, K)
  np.testing.assert_array_equal(state.x, xs[slots])
  np.testing.assert_array_equal(state.y, ys[slots])
  np.testing.assert_array_equal(state.class_count, np.bincount(ys[slots], minlength=K))


def _codes(n):
  """uint8 codes [n, 2, 2, 2] whose first two bytes identify the item (i % 256, i // 256)."""
  c = np.zeros((n, 2, 2, 2), np.uint8)
  c[:, 0, 0, 0], c[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
  return c


def _ids(codes):
  return np.asarray(codes)[:, 0, 0, 0].astype(int) + 256 * np.asarray(codes)[:, 0, 0, 1].astype(int)


def test_codes_evict_from_a_largest_class_and_new_item_stays():
  cap, k, n = 12, 4, 200
  labels = np.random.default_rng(0).choice(k, size=n, p=[0.55, 0.25, 0.15, 0.05]).astype(np.int32)
  codes = _codes(n)
  state = largest_class.init(common.KEY, cap, codes[0], k)
  assert state.x.dtype == jnp.uint8 and state.x.shape == (cap, 2, 2, 2)
  insert = common.jitted_insert(NAME)
  for i in range(n):
    old_ids, old_labels, old_cc = _ids(state.x), np.asarray(state.y), np.asarray(state.class_count)
    state = insert(state, codes[i:i + 1], labels[i:i + 1], np.ones(1, bool))
    lab, cc = np.asarray(state.y), np.asarray(state.class_count)
    assert int(state.count) == min(i + 1, cap)
    np.testing.assert_array_equal(cc, np.bincount(lab[lab >= 0], minlength=k))
    changed = np.flatnonzero(_ids(state.x) != old_ids) if i else np.array([0])
    assert len(changed) == 1 and _ids(state.x)[changed[0]] == i  # the new item always stays
    if i < cap:
      assert changed[0] == i  # append at the end of the filled prefix
    else:
      evicted = old_labels[changed[0]]
      assert evicted == np.flatnonzero(old_cc == old_cc.max())[0]  # a largest; lowest id on ties
  # Class balance: the majority class may not keep more than its share once full.
  assert np.asarray(state.class_count).max() <= int(np.ceil(cap / k)) + 1


def test_eviction_is_uniform_within_the_largest_class():
  x = _codes(7)
  y = np.array([0, 1, 0, 2, 0, 0, 2], np.int32)  # class 0 holds slots 0, 2, 4, 5 when item 6 comes

  def final(key):
    s = largest_class.init(key, 6, x[0], 3)
    return largest_class.insert(s, x, y, np.ones(7, bool)).x

  out = jax.jit(jax.vmap(final))(jax.random.split(jax.random.key(5), 800))
  hits = collections.Counter(int(np.flatnonzero(_ids(o) == 6)[0]) for o in np.asarray(out))
  assert set(hits) == {0, 2, 4, 5}
  assert min(hits.values()) > 150  # 200 expected each


def test_protocol_pieces():
  codes, ys = _codes(30), np.arange(30, dtype=np.int32) % K
  state = common.run(NAME, CAP, K, codes, ys)
  common.check_pieces(NAME, state, CAP, K, codes[0])


def test_no_recompiles():
  xs, ys = common.stream(4, 64, K)
  common.check_no_recompiles(NAME, CAP, K, xs, ys)
