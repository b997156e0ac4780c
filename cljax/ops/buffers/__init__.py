"""Replay buffers: one protocol, one file per policy.

A policy is a :class:`Policy` record of pure functions over a state that is a NamedTuple of arrays
(one pytree: jittable, donatable, checkpointable; fixed shapes, so filling a buffer never
recompiles)::

    policy = buffers.get("reservoir")
    state = policy.init(key, capacity, example, num_classes)
    state = policy.insert(state, x, y, mask)          # x [B, ...], y [B] int, mask [B] bool
    s = policy.sample(state, key, n, distinct=False)  # Sample: x [n, ...], y [n], weight [n]
    c = policy.contents(state)                        # Contents: x, y, weight, mask over all slots

Promises, for every policy:

* ``capacity`` is the total number of items. Per-class policies (queue, kmeans, exstream,
  clustream, hpstream) keep c = capacity // num_classes items per class and raise ValueError
  unless it divides with c >= 1 (c >= 2 for exstream, clustream and hpstream).
* ``example`` is one item without batch axis, an array or anything with ``.shape``/``.dtype``
  (e.g. ``jax.ShapeDtypeStruct``); stored items have its shape and dtype (uint8 codes [h, w, m]
  for REMIND, float images for ER). queue, kmeans and exstream compute distances and need 1-D
  items [d] (kmeans and exstream store a non-float dtype as float32).
* ``insert`` offers rows in order; rows with mask False are skipped and do not count as offered.
  Labels of unmasked rows must lie in [0, num_classes) (callers check). All randomness of insert
  comes from a key stored in the state by ``init`` as raw key data (``jax.random.key_data``,
  uint32) and the stream position: the draw for the n-th offered example (0-based) derives from
  ``fold_in(key, n)``. So the state after a stream does not depend on how the stream was cut into
  batches (task_balanced aside: there one insert call is one task), which lets a buffer shard over
  devices and resume exactly.
* ``sample(state, key, n, distinct=False)`` (``n``, ``distinct`` static): n items uniformly with
  replacement from the filled items. ``distinct=True``: a uniformly random ordered n-subset when at
  least n items are filled, otherwise every filled item once in random order, then the remaining
  rows with replacement. ``weight`` is the item's weight (1 for plain items; the number of merged
  examples for exstream/kmeans centroids), 0 on every row (and y 0) when the buffer is empty.
* ``contents(state)``: every slot; ``mask`` True on filled slots, ``weight`` 0 and ``y`` -1 on the
  others.
* Sharding: the slot policies (append, reservoir, class_balanced, greedy, largest_class,
  task_balanced, ranked) declare their item array in ``SHARDED_ROWS``; placed by
  ``cljax.ops.sharding.state_specs`` on a mesh (``jax.set_mesh``) whose ``data`` size divides the
  capacity, insert, sample and contents keep the items split over ``data`` and give bit for bit
  the single-device results (labels and counters stay replicated, so every decision is taken
  once). The per-class policies stay replicated.

Policies (:func:`names`): ``append``, ``reservoir``, ``class_balanced``, ``greedy``,
``largest_class``, ``task_balanced``, ``queue``, ``kmeans``, ``exstream``, ``clustream``,
``hpstream``, ``ranked``; each module's docstring states its rule and its draws. Extras beyond the
protocol: ``append.clear``, ``init(..., max_tasks=256)`` and ``insert(..., level=None)`` of
``task_balanced``, ``init`` options of clustream/hpstream, and ``insert(..., max_width=None)`` of
the per-class clustering policies.
"""

from __future__ import annotations

from cljax.ops.buffers import (append, class_balanced, clustream, exstream, greedy, hpstream,
                               kmeans, largest_class, queue, ranked, reservoir, task_balanced)
from cljax.ops.buffers._base import Contents, Policy, Sample

_POLICIES = {m.POLICY.name: m.POLICY for m in (append, reservoir, class_balanced, greedy,
                                                largest_class, task_balanced, queue, kmeans,
                                                exstream, clustream, hpstream, ranked)}


def names() -> list[str]:
  """The policy names, sorted."""
  return sorted(_POLICIES)


def get(name: str) -> Policy:
  """The :class:`Policy` called ``name``; ValueError listing the valid names otherwise."""
  if name not in _POLICIES:
    raise ValueError(f"unknown buffer policy {name!r}; valid: {names()}")
  return _POLICIES[name]


__all__ = ["Contents", "Policy", "Sample", "get", "names", "append", "reservoir",
           "class_balanced", "greedy", "largest_class", "task_balanced", "queue", "kmeans",
           "exstream", "clustream", "hpstream", "ranked"]
