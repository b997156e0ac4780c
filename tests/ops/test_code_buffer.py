"""Tests for cljax.ops.code_buffer: capacity, largest-class eviction, sampling, fixed shapes."""

import collections

import jax
import jax.numpy as jnp
import numpy as np

from cljax.ops import code_buffer as cb

_insert = jax.jit(cb.insert)
_sample = jax.jit(cb.sample, static_argnums=2)


def _id_codes(i):
  # Two bytes that identify the i-th inserted item, so an overwritten slot can be traced.
  return jnp.array([i % 256, i // 256], jnp.uint8)


def test_create_shapes_and_dtypes():
  buf = cb.create(10, (3, 3, 4), num_classes=5)
  assert buf.codes.shape == (10, 3, 3, 4) and buf.codes.dtype == jnp.uint8
  assert buf.labels.dtype == jnp.int32 and (np.asarray(buf.labels) == -1).all()
  assert int(buf.count) == 0 and buf.class_counts.shape == (5,)
  assert buf.capacity == 10


def test_appends_then_never_exceeds_capacity_and_evicts_from_a_largest_class():
  cap, k = 12, 4
  rng = np.random.default_rng(0)
  labels = rng.choice(k, size=200, p=[0.55, 0.25, 0.15, 0.05])
  buf = cb.create(cap, (2,), k)
  key = jax.random.key(0)
  for i, y in enumerate(labels):
    old_counts = np.asarray(buf.class_counts)
    old_ids = np.asarray(buf.codes).astype(int) @ [1, 256]
    old_labels = np.asarray(buf.labels)
    old_count = int(buf.count)
    buf = _insert(buf, _id_codes(i), jnp.int32(y), jax.random.fold_in(key, i))
    count, counts, lab = int(buf.count), np.asarray(buf.class_counts), np.asarray(buf.labels)
    assert count == min(i + 1, cap) <= cap
    np.testing.assert_array_equal(counts, np.bincount(lab[lab >= 0], minlength=k))
    new_ids = np.asarray(buf.codes).astype(int) @ [1, 256]
    changed = np.flatnonzero(new_ids != old_ids) if i else np.array([0])
    assert len(changed) == 1 and new_ids[changed[0]] == i  # the new item always stays
    if old_count < cap:
      assert changed[0] == old_count  # append at the end of the filled prefix
    else:
      evicted_class = old_labels[changed[0]]
      assert old_counts[evicted_class] == old_counts.max()
      assert evicted_class == np.flatnonzero(old_counts == old_counts.max())[0]  # ties: lowest id
  # Class balance: the majority class may not keep more than its share once full.
  assert np.asarray(buf.class_counts).max() <= int(np.ceil(cap / k)) + 1


def test_eviction_is_uniform_within_the_largest_class():
  buf = cb.create(6, (2,), 3)
  for i, y in enumerate([0, 1, 0, 2, 0, 0]):  # class 0 holds slots 0, 2, 4, 5
    buf = _insert(buf, _id_codes(i), jnp.int32(y), jax.random.key(i))
  hits = collections.Counter()
  for t in range(800):
    out = _insert(buf, _id_codes(99), jnp.int32(2), jax.random.key(1000 + t))
    hits[int(np.flatnonzero(np.asarray(out.codes)[:, 0] == 99)[0])] += 1
  assert set(hits) == {0, 2, 4, 5}
  assert min(hits.values()) > 150  # 200 expected each


def test_masked_insert_is_a_no_op():
  buf = cb.create(3, (2,), 2)
  buf = _insert(buf, _id_codes(1), jnp.int32(1), jax.random.key(0))
  out = _insert(buf, _id_codes(7), jnp.int32(0), jax.random.key(1), False)
  for a, b in zip(jax.tree.leaves(buf), jax.tree.leaves(out)):
    np.testing.assert_array_equal(a, b)


def test_batch_insert_equals_sequential_inserts():
  codes = jnp.arange(20, dtype=jnp.uint8).reshape(10, 2)
  labels = jnp.array([0, 1, 1, 2, 0, 1, 1, 1, 2, 0])
  mask = jnp.array([True] * 4 + [False] + [True] * 5)
  key = jax.random.key(3)
  batch = jax.jit(cb.insert_batch)(cb.create(6, (2,), 3), codes, labels, key, mask)
  seq = cb.create(6, (2,), 3)
  for i, k in enumerate(jax.random.split(key, 10)):
    seq = _insert(seq, codes[i], labels[i], k, mask[i])
  for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(seq)):
    np.testing.assert_array_equal(a, b)


def _filled(n, cap=50, k=5):
  codes = jnp.arange(n, dtype=jnp.uint8)[:, None]
  labels = jnp.arange(n) % k
  return cb.insert_batch(cb.create(cap, (1,), k), codes, labels, jax.random.key(0))


def test_sample_without_replacement_among_filled_slots():
  buf = _filled(30)
  freq = np.zeros(50)
  for t in range(300):
    idx, distinct = _sample(buf, jax.random.key(t), 10)
    idx = np.asarray(idx)
    assert distinct.all() and len(set(idx.tolist())) == 10
    assert idx.min() >= 0 and idx.max() < 30
    freq[idx] += 1
  assert freq[30:].sum() == 0
  assert freq[:30].min() > 60 and freq[:30].max() < 140  # 100 expected each
  # The order is random too: slot 29 (Floyd's last candidate) lands anywhere.
  positions = {int(np.flatnonzero(np.asarray(_sample(buf, jax.random.key(t), 29)[0]) == 29)[0])
               for t in range(60) if 29 in np.asarray(_sample(buf, jax.random.key(t), 29)[0])}
  assert len(positions) > 5


def test_sample_when_fewer_items_than_requested():
  buf = _filled(4)
  idx, distinct = _sample(buf, jax.random.key(1), 10)
  idx, distinct = np.asarray(idx), np.asarray(distinct)
  assert idx.shape == (10,) and distinct.tolist() == [True] * 4 + [False] * 6
  assert sorted(idx[:4].tolist()) == [0, 1, 2, 3]
  assert idx.min() >= 0 and idx.max() < 4
  idx, distinct = _sample(cb.create(5, (1,), 2), jax.random.key(1), 3)
  assert (np.asarray(idx) == 0).all() and not np.asarray(distinct).any()


def test_no_recompiles_as_it_fills():
  # Fresh wrappers: jit's executable cache is shared by every jax.jit of the same function object.
  insert = jax.jit(lambda *a: cb.insert(*a))
  sample = jax.jit(lambda b, k: cb.sample(b, k, 4))
  buf = cb.create(8, (2, 2), 3)
  for i in range(20):
    buf = insert(buf, jnp.full((2, 2), i, jnp.uint8), jnp.int32(i % 3), jax.random.key(i))
    sample(buf, jax.random.key(i))
  assert insert._cache_size() == 1 and sample._cache_size() == 1
