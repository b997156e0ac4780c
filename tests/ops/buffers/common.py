"""Checks every buffer policy must pass, called from each policy's test file and test_protocol.

Streams carry their stream position in feature 0 (``x[t, 0] == t``), so stored and sampled items
can be traced back to the example they came from.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax.ops import buffers

KEY = jax.random.key(42)
BATCHES = (1, 7, 64)


def stream(seed: int, n: int, num_classes: int, dim: int = 3, probs=None):
  """xs [n, dim] float32 with xs[:, 0] = stream position, ys [n] int32."""
  rng = np.random.default_rng(seed)
  ys = rng.choice(num_classes, size=n, p=probs).astype(np.int32)
  xs = rng.normal(size=(n, dim)).astype(np.float32)
  xs[:, 0] = np.arange(n)
  return xs, ys


_INSERTS = {}


def jitted_insert(name: str):
  """One jitted insert per policy, shared by the tests of a process: each shape compiles once."""
  if name not in _INSERTS:
    _INSERTS[name] = jax.jit(buffers.get(name).insert)
  return _INSERTS[name]


def feed(name: str, state, xs, ys, mask=None, batch: int = 64):
  """Inserts the stream in chunks of ``batch`` rows; the last chunk is padded with masked rows
  (garbage labels, out of range on purpose: masked rows may carry anything)."""
  n = len(ys)
  mask = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
  insert = jitted_insert(name)
  for s in range(0, n, batch):
    e = min(s + batch, n)
    x = np.full((batch, *xs.shape[1:]), 7, xs.dtype)
    y = np.full(batch, -3, np.int32)
    m = np.zeros(batch, bool)
    x[:e - s], y[:e - s], m[:e - s] = xs[s:e], ys[s:e], mask[s:e]
    state = insert(state, x, y, m)
  return state


def run(name: str, capacity: int, num_classes: int, xs, ys, mask=None, batch: int = 64,
        key=KEY, **init_kw):
  p = buffers.get(name)
  state = p.init(key, capacity, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype), num_classes,
                 **init_kw)
  return feed(name, state, xs, ys, mask, batch)


def assert_same(a, b):
  """Two states are identical, leaf by leaf (type and values)."""
  assert type(a) is type(b)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def check_batching_and_masks(name: str, capacity: int, num_classes: int, xs, ys, mask):
  """Same state whether the stream goes in batches of 1, 7 or 64; masked rows are skipped."""
  ref = run(name, capacity, num_classes, xs, ys, mask, batch=BATCHES[0])
  for b in BATCHES[1:]:
    assert_same(ref, run(name, capacity, num_classes, xs, ys, mask, batch=b))
  assert_same(ref, run(name, capacity, num_classes, xs[mask], ys[mask], batch=BATCHES[-1]))
  return ref


def check_no_recompiles(name: str, capacity: int, num_classes: int, xs, ys, batch: int = 8):
  """Filling a buffer (from empty to past full) compiles insert, sample and contents once."""
  p = buffers.get(name)
  insert = jax.jit(lambda *a: p.insert(*a))  # fresh wrappers: their caches count this test only
  sample = jax.jit(lambda s, k: p.sample(s, k, 4, True))
  contents = jax.jit(lambda s: p.contents(s))
  state = p.init(KEY, capacity, xs[0], num_classes)
  for s in range(0, len(ys) - batch + 1, batch):
    state = insert(state, xs[s:s + batch], ys[s:s + batch], np.ones(batch, bool))
    sample(state, jax.random.fold_in(KEY, s))
    contents(state)
  assert insert._cache_size() == 1  # pylint: disable=protected-access
  assert sample._cache_size() == 1  # pylint: disable=protected-access
  assert contents._cache_size() == 1  # pylint: disable=protected-access


def check_contents(name: str, state, capacity: int, example):
  """Contents: every slot; dtype/shape of the example; mask, y -1 and weight 0 off the mask."""
  c = buffers.get(name).contents(state)
  assert c.x.shape == (capacity, *example.shape) and c.x.dtype == example.dtype
  assert c.y.shape == c.weight.shape == c.mask.shape == (capacity,)
  assert c.y.dtype == jnp.int32 and c.weight.dtype == jnp.float32 and c.mask.dtype == jnp.bool_
  m, y, w = np.asarray(c.mask), np.asarray(c.y), np.asarray(c.weight)
  assert (y[~m] == -1).all() and (w[~m] == 0).all()
  assert (y[m] >= 0).all() and (w[m] >= 1).all()
  return c


def check_sample(name: str, state, n: int = 5):
  """Sample shapes/dtypes; rows are filled items (with their weights), with or without distinct."""
  p = buffers.get(name)
  c = p.contents(state)
  held = {np.asarray(c.x[i]).tobytes(): (int(c.y[i]), float(c.weight[i]))
          for i in np.flatnonzero(np.asarray(c.mask))}
  both = jax.jit(lambda s, k: (p.sample(s, k, n), p.sample(s, k, n, True)))
  for s in both(state, jax.random.key(1)):
    assert s.x.shape == (n, *c.x.shape[1:]) and s.x.dtype == c.x.dtype
    assert s.y.shape == s.weight.shape == (n,)
    assert s.y.dtype == jnp.int32 and s.weight.dtype == jnp.float32
    for x, y, w in zip(np.asarray(s.x), np.asarray(s.y), np.asarray(s.weight)):
      assert held[x.tobytes()] == (int(y), float(w))


def check_empty(name: str, capacity: int, num_classes: int, example, n: int = 6):
  """An empty buffer (filled with masked rows only) samples weight 0 and y 0 on every row."""
  p = buffers.get(name)

  def go(key):
    state = p.init(key, capacity, example, num_classes)
    state = p.insert(state, jnp.ones((3, *example.shape), example.dtype), jnp.array([0, 1, 0]),
                     jnp.zeros(3, bool))
    return p.contents(state), p.sample(state, key, n), p.sample(state, key, n, True)

  c, *samples = jax.jit(go)(KEY)
  assert not np.asarray(c.mask).any() and not np.asarray(c.weight).any()
  for s in samples:
    assert s.x.shape == (n, *example.shape)
    np.testing.assert_array_equal(s.weight, np.zeros(n, np.float32))
    np.testing.assert_array_equal(s.y, np.zeros(n, np.int32))


def check_distinct(name: str, state, n: int = 4, trials: int = 600):
  """Distinct samples: no repeats when at least n items are filled, each filled item drawn about
  equally often (loose bounds: only a real bias fails); fewer than n: all items, then repeats."""
  p = buffers.get(name)
  c = p.contents(state)
  filled = np.flatnonzero(np.asarray(c.mask))
  ids = {np.asarray(c.x[i]).tobytes(): j for j, i in enumerate(filled)}
  keys = jax.random.split(jax.random.key(7), trials)
  xs = np.asarray(jax.jit(jax.vmap(lambda k: p.sample(state, k, n, True).x))(keys))
  drawn = np.array([[ids[r.tobytes()] for r in t] for t in xs])
  m = len(filled)
  if m >= n:
    assert all(len(set(t)) == n for t in drawn)
    freq = np.bincount(drawn.ravel(), minlength=m)
    expected = trials * n / m
    assert freq.min() > 0.6 * expected and freq.max() < 1.4 * expected, freq
    # The order is random too: every item shows up in the first row.
    assert len(set(drawn[:, 0])) == m
  else:
    assert all(sorted(t[:m]) == list(range(m)) for t in drawn)



def check_pieces(name: str, state, capacity: int, num_classes: int, example) -> None:
  """contents, sample, distinct sampling and the empty buffer of ``state`` (filled from a stream
  whose first item is ``example``): the protocol's promises in one call."""
  out = check_contents(name, state, capacity, example)
  check_sample(name, state)
  check_distinct(name, state)
  check_empty(name, capacity, num_classes,
              example if isinstance(example, jax.ShapeDtypeStruct)
              else jnp.zeros(np.shape(example), jnp.asarray(example).dtype))
  return out
