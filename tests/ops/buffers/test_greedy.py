"""Tests for cljax/ops/buffers/greedy.py: GDumb's greedy class-balancing sampler."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.ops.buffers import common

NAME, CAP, K = "greedy", 12, 4


@jax.jit
def _rank(key, n, size):
  """The policy's draw for stream position n: the victim's rank in [0, size) within its class."""
  return jax.random.randint(jax.random.fold_in(key, n), (), 0, jnp.maximum(size, 1))


def reference(key, ys, mask, cap, k):
  """GDumb's sampler as RaptorMai/online-continual-learning writes it (agents/gdumb.py lines
  19-32, ``greedy_balancing_update``), one example at a time, with this policy's draws for the
  victim and ties between largest classes broken by the lowest class id: the stream index held
  by each slot (-1 empty)."""
  slots, labels = -np.ones(cap, int), -np.ones(cap, int)
  mem_c = {}  # class -> slots held
  for n, t in enumerate(np.flatnonzero(mask)):
    y = int(ys[t])
    k_c = cap // max(1, len(mem_c))
    if y in mem_c and mem_c[y] >= k_c:
      continue  # at its fair share: dropped, even if a slot is free
    if sum(mem_c.values()) >= cap:
      big = min(c for c, v in mem_c.items() if v == max(mem_c.values()))
      slot = np.flatnonzero(labels == big)[int(_rank(key, n, mem_c[big]))]
      mem_c[big] -= 1
      if mem_c[big] == 0:
        del mem_c[big]
    else:
      slot = int((slots >= 0).sum())
    slots[slot], labels[slot] = t, y
    mem_c[y] = mem_c.get(y, 0) + 1
  return slots


def test_matches_sequential_reference():
  xs, ys = common.stream(0, 120, K, probs=[0.55, 0.25, 0.15, 0.05])
  mask = np.random.default_rng(1).random(120) < 0.8
  state = common.check_batching_and_masks(NAME, CAP, K, xs, ys, mask)
  slots = reference(common.KEY, ys, mask, CAP, K)
  np.testing.assert_array_equal(state.x, xs[slots])
  np.testing.assert_array_equal(state.y, ys[slots])
  np.testing.assert_array_equal(state.class_count, np.bincount(ys[slots], minlength=K))


def test_fair_share_admission():
  # Capacity 6: class 0 alone may fill it (fair share 6), then class 1 is admitted while it holds
  # fewer than 6 // 2 = 3 slots, each time evicting from class 0; then neither class enters again.
  ys = np.r_[np.zeros(10, int), np.ones(10, int), np.zeros(5, int)].astype(np.int32)
  xs = np.arange(25, dtype=np.float32)[:, None]
  state = common.run(NAME, 6, 2, xs, ys)
  np.testing.assert_array_equal(state.class_count, [3, 3])
  held = np.sort(np.asarray(state.x[:, 0]).astype(int))
  np.testing.assert_array_equal(held[3:], [10, 11, 12])  # class 1's first three
  # Admission is by the fair share: with capacity 10 and classes 0, 1, 2 holding 3 slots each
  # (fair share 10 // 3 = 3), a fourth example of class 0 is dropped although a slot is free
  # (the old rule appended while not full); a new class 3 takes the free slot, and its second
  # example (fair share 10 // 4 = 2) evicts from a largest class, the lowest id of the tie.
  ys = np.r_[[0, 0, 0, 1, 1, 1, 2, 2, 2], [0], [3, 3]].astype(np.int32)
  xs = np.arange(len(ys), dtype=np.float32)[:, None]
  state = common.run(NAME, 10, 4, xs, ys)
  np.testing.assert_array_equal(state.class_count, [2, 3, 3, 2])  # 3 evicted one of class 0
  assert 9 not in np.asarray(state.x[:int(state.count), 0]).astype(int)  # the dropped example


def test_protocol_pieces():
  xs, ys = common.stream(2, 40, K)
  state = common.run(NAME, CAP, K, xs, ys)
  common.check_pieces(NAME, state, CAP, K, xs[0])


def test_no_recompiles():
  xs, ys = common.stream(4, 64, K)
  common.check_no_recompiles(NAME, CAP, K, xs, ys)
