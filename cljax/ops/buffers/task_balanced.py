"""``task_balanced``: DietCL's task-balanced memory.

Each ``insert`` call adds its unmasked rows as ONE new task (a time step's labelled data); the
state counts the calls, and task ids past ``max_tasks - 1`` share the last id. After every call the
capacity is reallocated by water-filling: every task keeps min(its examples, L) slots for the
largest level L whose total fits, and the slots left over go one each to the first tasks (lowest
id) that have more examples. A task over its quota keeps a uniformly random subset.

Randomness: the n-th offered example gets the score ``uniform(fold_in(key, n))`` (the state stores
the stream position ``index``, the score is recomputed from it); a task keeps the items of its
lowest scores. As scores never change and a finished task's quota never grows, the items kept at
each reallocation are a uniformly random subset of the task, nested in the items kept before (the
shared last id pools its tasks' rows and keeps the lowest scores of the pool). Kept old items stay in slot order,
followed by the new task's kept rows in stream order. Fixed shapes throughout; O((capacity + B)
log(capacity + B)) per call.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cljax.ops import sharding

from cljax.ops.buffers._base import (Policy, clean_labels, count_offers, draw_key, init_slots,
                                     sample_slots, slot_contents)

NAME = "task_balanced"


class TaskBalancedState(NamedTuple):
  """A slot state (see ``_base.SlotState``: x, y, count, seen, class_count, class_seen, key) plus:

  Attributes:
    task: [capacity] int32 task id of each slot, -1 where empty.
    task_count: [max_tasks] int32 items held per task id (its length is ``max_tasks``).
    index: [capacity] int32 stream position (0-based offered-example number) of each slot's item,
      -1 where empty; its random score is derived from it.
    tasks: [] int32 insert calls so far (the next task's id, before clipping to max_tasks - 1).
  """

  x: jax.Array
  y: jax.Array
  count: jax.Array
  seen: jax.Array
  class_count: jax.Array
  class_seen: jax.Array
  key: jax.Array
  task: jax.Array
  task_count: jax.Array
  index: jax.Array
  tasks: jax.Array

  SHARDED_ROWS = ("x",)  # as SlotState: the items split over ``data``, the rest replicated


def init(key, capacity: int, example, num_classes: int, *,
         max_tasks: int = 256) -> TaskBalancedState:
  """An empty memory of ``capacity`` items shaped like ``example``; ``key`` seeds its draws.

  ``max_tasks`` (>= 1) is the number of task ids told apart; later tasks share the last id. It is
  the length of ``task_count``, so insert reads it from the state.
  """
  if int(max_tasks) < 1:
    raise ValueError(f"max_tasks must be >= 1, got {max_tasks}")
  s = init_slots(key, capacity, example, num_classes)
  empty = jnp.full((capacity,), -1, jnp.int32)
  return TaskBalancedState(*s, task=empty, task_count=jnp.zeros((max_tasks,), jnp.int32),
                           index=empty, tasks=jnp.zeros((), jnp.int32))


def quotas(counts: jax.Array, capacity: int) -> jax.Array:
  """Water-filling quotas [T] int32 for tasks of ``counts`` [T] examples in ``capacity`` slots.

  quota_t = min(counts_t, L) for the largest level L with sum_t min(counts_t, L) <= capacity, plus
  one slot each for the first ``capacity - sum`` tasks with counts_t > L.
  """
  lo, hi = jnp.int32(0), jnp.int32(capacity)  # invariant: sum(min(counts, lo)) <= capacity
  for _ in range(max(1, math.ceil(math.log2(capacity + 1))) + 1):  # binary search on L
    mid = (lo + hi + 1) // 2
    ok = jnp.sum(jnp.minimum(counts, mid)) <= capacity
    lo, hi = jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)
  quota = jnp.minimum(counts, lo)
  left = capacity - jnp.sum(quota)
  eligible = counts > quota
  return quota + (eligible & (jnp.cumsum(eligible) - 1 < left)).astype(jnp.int32)


def insert(state: TaskBalancedState, x: jax.Array, y: jax.Array, mask: jax.Array,
           level=None) -> TaskBalancedState:
  """Adds the unmasked rows of x [B, ...], y [B] as one new task and rebalances the memory.

  Every call counts as a task, even one whose rows are all masked (it then holds nothing).
  ``level`` (optional [] int): no task keeps more than ``level`` items after this call, on top
  of the water-filling (DietCL's reference truncates every task to min(current, previous) items,
  wx-zhang/continual-learning-on-a-diet ``data.py`` lines 56-93; lower scores are kept, so the
  kept items stay nested).
  """
  y, mask = clean_labels(y, mask)
  cap, k, max_tasks = state.y.shape[0], state.class_count.shape[0], state.task_count.shape[0]
  tid = jnp.minimum(state.tasks, max_tasks - 1)
  n = state.seen + jnp.cumsum(mask, dtype=jnp.int32) - 1
  # Candidates: the old slots, then the new rows; one ranking decides what stays.
  task = jnp.concatenate([state.task, jnp.where(mask, tid, -1)])
  index = jnp.concatenate([state.index, jnp.where(mask, n, -1)])
  valid = task >= 0
  t_sort = jnp.where(valid, task, max_tasks)
  counts = state.task_count.at[tid].add(jnp.sum(mask, dtype=jnp.int32))
  quota = quotas(counts, cap)
  if level is not None:
    quota = jnp.minimum(quota, jnp.maximum(jnp.asarray(level, jnp.int32), 0))
  score = jax.vmap(lambda i: jax.random.uniform(draw_key(state.key, i)))(index)
  order = jnp.lexsort((jnp.where(valid, score, 2.0), t_sort))  # by task, then score
  st = t_sort[order]
  rank_sorted = jnp.arange(st.shape[0]) - jnp.searchsorted(st, st, side="left")
  rank = jnp.zeros(st.shape, jnp.int32).at[order].set(rank_sorted.astype(jnp.int32))
  keep = valid & (rank < quota[jnp.clip(task, 0, max_tasks - 1)])
  # Compact: kept candidates first, stable (old slots in slot order, then new rows in stream
  # order). The quotas sum to at most cap, so the first cap positions hold every kept candidate.
  src = jnp.argsort(~keep, stable=True)[:cap]
  count = jnp.sum(keep, dtype=jnp.int32)
  filled = jnp.arange(cap) < count
  new_y = jnp.where(filled, jnp.concatenate([state.y, y])[src], -1)
  state = count_offers(state, y, mask)
  return sharding.constrain(state._replace(
      x=sharding.permute_rows(state.x, x, src),
      y=new_y,
      count=count,
      class_count=jnp.zeros((k,), jnp.int32).at[jnp.where(filled, new_y, k)].add(1, mode="drop"),
      task=jnp.where(filled, task[src], -1),
      task_count=jnp.minimum(counts, quota),  # a task keeps exactly its quota when over it
      index=jnp.where(filled, index[src], -1),
      tasks=state.tasks + 1))


POLICY = Policy(NAME, init, insert, sample_slots, slot_contents)
