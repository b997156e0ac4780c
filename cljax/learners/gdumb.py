"""GDumb (Prabhu, Torr, Dokania, ECCV 2020): a greedy class-balanced memory and nothing else.

Every incoming labelled example is offered to a fixed-capacity memory with GDumb's greedy
class-balancing sampler: while the memory is not full, store; once full, an example whose class
holds fewer slots than the largest class evicts a random item of a largest class, otherwise it is
dropped. After each time step the model is retrained *from its initialization* (a fresh optimizer
too) on the memory only, spending exactly the step's budget of forward-backward passes; its logits
are masked to the classes present in memory, in training and in prediction.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from cljax.learner import Learner, register
from cljax.learners import _common
from cljax.ops import buffers
from cljax.ops import sharding


def greedy_insert_one(buf: dict, x: jax.Array, y: jax.Array, key: jax.Array,
                      do: jax.Array) -> dict:
  """GDumb's sampler for one example x [...], y [] (a no-op where ``do`` is False).

  Not full: append. Full: if class ``y`` holds fewer slots than the largest class, replace a
  uniformly random item of a largest class; else drop. Unlike the class-balanced reservoir of
  ``ops.buffers`` there is no probabilistic replacement within a class (GDumb keeps the first ones).
  """
  cap = buffers.capacity(buf)
  cc = buf["class_count"]
  not_full = buf["count"] < cap
  victim = buffers._random_slot_of_class(buf, jnp.argmax(cc), key)  # pylint: disable=protected-access
  slot = jnp.where(not_full, buf["count"], victim)
  write = do & (not_full | (cc[y] < jnp.max(cc)))
  out = buffers._write(buf, slot, x, y, write)  # pylint: disable=protected-access
  inc = do.astype(jnp.int32)
  return {**out, "seen": buf["seen"] + inc, "class_seen": buf["class_seen"].at[y].add(inc),
          "count": jnp.minimum(buf["count"] + (do & not_full).astype(jnp.int32), cap)}


def greedy_insert(buf: dict, x: jax.Array, y: jax.Array, mask: jax.Array, key: jax.Array) -> dict:
  """Offers a batch x [B, ...], y [B] in order; rows with mask [B] False are skipped."""
  keys = jax.random.split(key, y.shape[0])

  def body(b, row):
    xi, yi, mi, ki = row
    return greedy_insert_one(b, xi, yi, ki, mi), None

  buf, _ = jax.lax.scan(body, buf, (x, y, mask, keys))
  return buf


@register("gdumb")
def gdumb(*, num_classes: int, model: str = "cnn", model_kwargs: Optional[dict] = None,
          optimizer: str = "adam", lr: float = 1e-3, momentum: float = 0.9,
          weight_decay: float = 0.0, batch_size: int = 32, memory_size: int = 200,
          epochs_per_step: float = 5.0, chunk: int = 8,
          init_params: Optional[dict] = None) -> Learner:
  """Builds GDumb (see module docstring).

  Args:
    num_classes: K, size of the output layer; classes absent from memory are masked.
    model, model_kwargs: a model name from ``cljax.models.names()`` and its constructor options.
    optimizer, lr, momentum, weight_decay: see ``_common.optimizer``; a fresh one every step.
    batch_size: examples per SGD step (one forward-backward pass of the budget).
    memory_size: capacity of the memory, in examples.
    epochs_per_step: default passes (in epochs over the memory) when the runner gives no budget.
    chunk: SGD steps per jitted host-loop call (unrolled; XLA:CPU convs are slow inside loops).
    init_params: the initialization every step restarts from (e.g. an MAE-pretrained ViT,
      ``cljax.train.mae.train_mae``) instead of a random one; same model and structure.
  """
  for k, v in (("batch_size", batch_size), ("memory_size", memory_size),
               ("num_classes", num_classes), ("chunk", chunk)):
    if int(v) < 1:
      raise ValueError(f"{k} must be >= 1, got {v}")
  tx = _common.optimizer(optimizer, lr, momentum, weight_decay)
  net = _common.LazyModel("gdumb", model, num_classes, model_kwargs)
  _apply = net.apply

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    params = net.build(key, x, init_params)
    return {"params": params, "opt": tx.init(params), "init_params": params,
            "mem": buffers.init(memory_size, x.shape[1:], num_classes)}

  def update(state, batch, key):
    mask = batch["valid"] & batch["labeled"]
    y = jnp.where(mask, batch["y"], 0).astype(jnp.int32)
    mem = greedy_insert(state["mem"], batch["x"], y, mask, key)
    return {**state, "mem": mem}, {"passes": jnp.float32(0.0)}

  def _in_memory(state):
    return state["mem"]["class_count"] > 0

  def _reset(state):
    return {**state, "params": state["init_params"], "opt": tx.init(state["init_params"])}

  def _train_chunk(state, key, start, stop):
    """``chunk`` SGD steps on memory, unrolled; step start+i runs only if start+i < stop."""
    mem, seen = state["mem"], _in_memory(state)
    total = jnp.zeros(())
    for i in range(chunk):
      idx = buffers.sample_indices(jax.random.fold_in(key, start + i), mem["count"], batch_size)
      x, y, w = sharding.data_rows(
          (mem["x"][idx], mem["y"][idx], jnp.full((batch_size,), mem["count"] > 0, jnp.float32)))
      params, opt, loss = _common.train_step(
          net, tx, state["params"], state["opt"], x, w,
          lambda p, logits, y=y, w=w: _common.cross_entropy(_common.mask_logits(logits, seen), y, w))
      new = {**state, "params": params, "opt": opt}
      active = start + i < stop
      state = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state)
      total = total + jnp.where(active, loss, 0.0)
    return state, total

  reset_j, chunk_j = jax.jit(_reset), jax.jit(_train_chunk)

  def end_of_step(state, key, budget):
    """Retrains from the initialization on memory for exactly ``budget`` passes (default if < 0)."""
    budget = int(budget)
    passes = budget if budget >= 0 else math.ceil(
        epochs_per_step * int(state["mem"]["count"]) / batch_size)
    state = reset_j(state)
    total = 0.0
    for start in range(0, passes, chunk):
      state, loss = chunk_j(state, key, jnp.int32(start), jnp.int32(passes))
      total = total + loss
    return state, {"passes": jnp.float32(passes),
                   "loss": jnp.asarray(total, jnp.float32) / max(passes, 1)}

  # The compiled pieces, so tests can check that no step size or budget recompiles them.
  end_of_step.jitted = {"reset": reset_j, "chunk": chunk_j}

  def predict(state, x):
    return _common.mask_logits(_apply(state["params"], x), _in_memory(state))

  hp = dict(num_classes=num_classes, model=model, optimizer=optimizer, lr=lr,
            batch_size=batch_size, memory_size=memory_size, epochs_per_step=epochs_per_step)
  return Learner(name="gdumb", init=init, update=jax.jit(update), predict=jax.jit(predict),
                 end_of_step=end_of_step, hparams=hp)
