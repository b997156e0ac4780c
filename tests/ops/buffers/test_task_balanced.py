"""Tests for cljax/ops/buffers/task_balanced.py: DietCL's task-balanced memory.

One insert call is one task, so "the same stream in batches of 1, 7 or 64" does not apply: cutting
the stream differently makes different tasks. What holds instead, and is tested: a task's result
does not depend on how its rows are padded or interleaved with masked rows.
"""

import jax
import jax.numpy as jnp
import numpy as np

from cljax.ops import buffers
from cljax.ops.buffers import task_balanced
from tests.ops.buffers import common

NAME, CAP, K, B = "task_balanced", 10, 3, 32


def reference_quotas(counts, cap):
  """Water-filling, the slow obvious way: raise the level L while everything fits."""
  level = 0
  while level < cap and sum(min(c, level + 1) for c in counts) <= cap:
    level += 1
  quota = [min(c, level) for c in counts]
  left = cap - sum(quota)
  for t, c in enumerate(counts):
    if left and c > quota[t]:
      quota[t] += 1
      left -= 1
  return quota


def reference(key, tasks, cap, max_tasks):
  """Sequential task-balanced memory fed the policy's scores: the stream indices held, in slot
  order, and their task ids. ``tasks`` is a list of arrays of stream indices (one per call)."""
  total = sum(len(t) for t in tasks)
  score = np.asarray(jax.vmap(lambda n: jax.random.uniform(jax.random.fold_in(key, n)))(
      jnp.arange(max(total, 1))))
  held = []  # (stream index, task id)
  for call, rows in enumerate(tasks):
    tid = min(call, max_tasks - 1)
    cand = held + [(int(t), tid) for t in rows]
    counts = np.bincount([c[1] for c in cand], minlength=max_tasks)
    quota = reference_quotas(list(counts), cap)
    keep = set()
    for task in range(max_tasks):
      mine = [c for c in cand if c[1] == task]
      keep |= set(sorted(mine, key=lambda c: score[c[0]])[:quota[task]])
    held = [c for c in cand if c in keep]
  return held


def _tasks(seed, sizes):
  """Consecutive stream positions cut into tasks of ``sizes``."""
  edges = np.cumsum([0, *sizes])
  return [np.arange(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _add(state, xs, ys, rows, b=B, spread=None):
  """Inserts the stream rows ``rows`` as one task in a batch of ``b`` rows; with ``spread`` the rows
  sit at those batch positions and every other row is masked garbage."""
  pos = np.arange(len(rows)) if spread is None else np.asarray(spread)
  x, y, m = np.full((b, xs.shape[1]), 9, xs.dtype), np.full(b, -4, np.int32), np.zeros(b, bool)
  x[pos], y[pos], m[pos] = xs[rows], ys[rows], True
  return common.jitted_insert(NAME)(state, x, y, m)


def _run(tasks, xs, ys, max_tasks=256, key=common.KEY):
  state = task_balanced.init(key, CAP, xs[0], K, max_tasks=max_tasks)
  for rows in tasks:
    state = _add(state, xs, ys, rows)
  return state


def _check_against_reference(state, tasks, xs, ys, max_tasks):
  held = reference(common.KEY, tasks, CAP, max_tasks)
  n = len(held)
  idx = np.array([h[0] for h in held], int)
  assert int(state.count) == n
  np.testing.assert_array_equal(np.asarray(state.index)[:n], idx)
  np.testing.assert_array_equal(np.asarray(state.task), [h[1] for h in held] + [-1] * (CAP - n))
  np.testing.assert_array_equal(np.asarray(state.x)[:n], xs[idx])
  np.testing.assert_array_equal(np.asarray(state.y), np.r_[ys[idx], -np.ones(CAP - n, int)])
  np.testing.assert_array_equal(state.class_count, np.bincount(ys[idx], minlength=K))
  np.testing.assert_array_equal(state.task_count, np.bincount([h[1] for h in held],
                                                              minlength=max_tasks))


def test_matches_sequential_reference():
  # Tasks smaller and larger than the memory, an empty task (still counts as one), uneven leftovers.
  tasks = _tasks(0, [4, 25, 0, 3, 7, 12, 1, 9])
  xs, ys = common.stream(0, 61, K)
  for max_tasks in (256, 3):  # 3: tasks from the third on share id 2
    state = _run(tasks, xs, ys, max_tasks)
    assert int(state.tasks) == len(tasks) and int(state.seen) == 61
    np.testing.assert_array_equal(state.class_seen, np.bincount(ys, minlength=K))
    _check_against_reference(state, tasks, xs, ys, max_tasks)


def test_quotas_water_filling():
  for counts, cap in [([4, 25, 3], 10), ([0, 0, 0], 5), ([2, 2], 10), ([7, 7, 7], 10),
                      ([1, 9, 9, 1], 7)]:
    got = task_balanced.quotas(jnp.asarray(counts, jnp.int32), cap)
    np.testing.assert_array_equal(got, reference_quotas(counts, cap))


def test_padding_and_masked_rows_do_not_matter():
  tasks = _tasks(1, [5, 14, 6])
  xs, ys = common.stream(1, 25, K)
  plain = _run(tasks, xs, ys)
  rng = np.random.default_rng(2)
  state = task_balanced.init(common.KEY, CAP, xs[0], K)
  for rows in tasks:  # rows at random positions of a bigger batch, order kept
    state = _add(state, xs, ys, rows, b=64, spread=np.sort(rng.choice(64, len(rows), False)))
  common.assert_same(plain, state)


def test_keeps_a_uniform_nested_subset():
  # One task of 20 into 10 slots, then a second task of 20: the first keeps 5, a subset of its 10.
  xs = np.arange(40, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
  ys = np.zeros(40, np.int32)
  x1, x2 = xs[:20], xs[20:]
  m = np.ones(20, bool)

  def one_run(key):
    s = task_balanced.init(key, CAP, xs[0], 1)
    s1 = task_balanced.insert(s, x1, ys[:20], m)
    s2 = task_balanced.insert(s1, x2, ys[20:], m)
    return s1.index, s2.index

  first, second = (np.asarray(a) for a in jax.jit(jax.vmap(one_run))(
      jax.random.split(jax.random.key(3), 1000)))
  assert all(set(b[:5]) <= set(a) for a, b in zip(first, second))
  assert (second[:, 5:] >= 20).all()
  counts = np.bincount(first.ravel(), minlength=20)
  assert counts.sum() == 10_000 and counts.min() > 400 and counts.max() < 600  # 500 expected


def test_level_gives_dietcls_reference_truncation():
  """DietCL's reference (wx-zhang/continual-learning-on-a-diet ``data.py`` lines 56-93,
  ``replay_buffer_size: -1``): after task t every task holds mem_len = min(|task t|, mem_len of
  t - 1) items, the earlier tasks truncated to a prefix of what they kept. With a memory large
  enough for all of it, ``level = min(current, previous)`` gives exactly those counts, nested."""
  sizes = [9, 12, 6, 8, 3, 5]
  xs, ys = common.stream(5, sum(sizes), K)
  state = task_balanced.init(common.KEY, 64, xs[0], K, max_tasks=8)
  insert = jax.jit(task_balanced.insert)
  mem_len, kept = -1, {}
  for t, rows in enumerate(_tasks(5, sizes)):
    mem_len = min(v for v in (len(rows), mem_len) if v > 0)  # data.py lines 68-69
    level = len(rows) if t == 0 else min(len(rows), int(state.task_count[0]))
    x, y, m = xs[rows], ys[rows], np.ones(len(rows), bool)
    state = insert(state, x, y, m, jnp.int32(level))
    task = np.asarray(state.task)
    np.testing.assert_array_equal(np.bincount(task[task >= 0], minlength=8)[:t + 1], mem_len)
    idx = np.asarray(state.index)
    for u in range(t + 1):
      now = set(idx[task == u].tolist())
      assert now <= kept.get(u, now)  # truncation keeps a subset of what the task held
      kept[u] = now
  assert int(state.count) == mem_len * len(sizes) == 3 * 6


def test_protocol_pieces():
  xs, ys = common.stream(2, 40, K)
  state = _run(_tasks(2, [12, 8, 20]), xs, ys)
  common.check_pieces(NAME, state, CAP, K, xs[0])
  assert buffers.get(NAME).init(common.KEY, CAP, xs[0], K, max_tasks=7).task_count.shape == (7,)


def test_no_recompiles():
  xs, ys = common.stream(4, 64, K)
  common.check_no_recompiles(NAME, CAP, K, xs, ys)
