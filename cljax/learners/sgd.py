"""Gradient-trained baselines: naive fine-tuning, experience replay (ER) and the offline learner.

All three are one learner with different memories (``memory``):

* ``finetune`` (``memory="none"``): warm-started SGD on the current time step's data only.
* ``er`` (``memory="reservoir"`` or ``"class_balanced"``): a fixed-capacity buffer of past
  examples; training batches are drawn uniformly from buffer ∪ current step (Prabhu et al. 2023's
  strong budgeted baseline) or half/half (``sampling="balanced"``).
* ``offline`` (``memory="all"``): keeps every example seen and, after each time step, retrains
  from the initial parameters on all of it (the joint upper bound and the reference for Omega).

Per incoming batch, ``update`` stores the labelled rows in a current-step buffer and optionally
takes ``iters_per_batch`` online SGD steps (the incoming rows plus a replayed batch). After the
step's last batch, ``end_of_step`` spends the step's remaining budget (one pass = one SGD step
on ``batch_size`` examples), then moves the step's data into the memory.
"""

from __future__ import annotations

import inspect
import math
from typing import Optional

import jax
import jax.numpy as jnp

from cljax.learner import Learner, register
from cljax.learners import _common
from cljax.ops import buffers

MEMORIES = ("none", "reservoir", "class_balanced", "all")
SAMPLINGS = ("uniform", "balanced")


def sgd_learner(name: str, *, num_classes: int, model: str = "cnn",
                model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
                momentum: float = 0.9, weight_decay: float = 0.0, batch_size: int = 32,
                memory: str = "none", memory_size: int = 200, sampling: str = "uniform",
                iters_per_batch: int = 0, epochs_per_step: float = 2.0,
                max_step_size: int = 4096, stream_size: Optional[int] = None,
                reinit_each_step: bool = False, respect_budget: bool = True,
                mask_unseen: bool = True, chunk: int = 8) -> Learner:
  """Builds a replay-family learner (see module docstring).

  Args:
    num_classes: K, the size of the output layer (fixed; unseen classes are masked).
    model: a name from ``cljax.models.names()``; ``model_kwargs`` go to its constructor.
    optimizer, lr, momentum, weight_decay: see ``_common.optimizer``.
    batch_size: examples per SGD step (one forward-backward pass of the budget).
    memory: one of MEMORIES; ``memory_size`` is its capacity in examples.
    sampling: how training batches mix memory and current data (one of SAMPLINGS).
    iters_per_batch: online SGD steps per incoming batch (0: train only at the end of a step).
    epochs_per_step: default passes at the end of a step, in epochs over the step's data
      (over all stored data for ``memory="all"``); used when the runner sets no budget.
    max_step_size: capacity of the current-step buffer (the runner passes the stream's largest
      time step).
    stream_size: total examples in the stream (the runner passes it; ``memory="all"`` needs it).
    reinit_each_step: restart from the initial parameters and a fresh optimizer every step.
    respect_budget: if False, ignore the runner's budget and always train the default passes.
    mask_unseen: predict gives unseen classes a large negative logit.
    chunk: SGD steps per jitted call at the end of a step (unrolled; see ``_train_chunk``).
  """
  if memory not in MEMORIES:
    raise ValueError(f"unknown memory {memory!r}; valid: {list(MEMORIES)}")
  if sampling not in SAMPLINGS:
    raise ValueError(f"unknown sampling {sampling!r}; valid: {list(SAMPLINGS)}")
  if memory == "all":
    if stream_size is None:
      raise ValueError("memory='all' needs stream_size (the number of examples in the stream)")
    memory_size = stream_size
  for key, val in (("batch_size", batch_size), ("max_step_size", max_step_size),
                   ("memory_size", memory_size), ("num_classes", num_classes)):
    if int(val) < 1:
      raise ValueError(f"{key} must be >= 1, got {val}")
  tx = _common.optimizer(optimizer, lr, momentum, weight_decay)
  net = {}  # filled by init: the model's pure functions (static for jit)

  def _apply(params, x):
    if "model" not in net:
      raise RuntimeError(f"learner {name!r}: call init(key, example_batch) before update/predict")
    return net["model"].apply(params, x)

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    net["model"] = _common.pure_model(model, x.shape[1:], num_classes, key, model_kwargs)
    params = net["model"].params
    state = {
        "params": params,
        "opt": tx.init(params),
        "seen": jnp.zeros((num_classes,), bool),
        "cur": buffers.init(max_step_size, x.shape[1:], num_classes),
    }
    if memory != "none":
      state["mem"] = buffers.init(memory_size, x.shape[1:], num_classes)
    if reinit_each_step:
      state["init_params"] = params
    return state

  def _loss(params, x, y, w):
    return _common.cross_entropy(_apply(params, x), y, w)

  def _sgd(state, x, y, w):
    loss, grads = jax.value_and_grad(_loss)(state["params"], x, y, w)
    upd, opt = tx.update(grads, state["opt"], state["params"])
    params = jax.tree.map(lambda p, u: p + u, state["params"], upd)
    return {**state, "params": params, "opt": opt}, loss

  def _gather(buf, idx):
    return buf["x"][idx], buf["y"][idx]

  def _sample(state, key, n):
    """n training examples [n, ...], [n] and weights [n] (0 where nothing is stored)."""
    cur = state["cur"]
    k1, k2, k3 = jax.random.split(key, 3)
    if memory == "none":
      x, y = _gather(cur, buffers.sample_indices(k1, cur["count"], n))
      return x, y, jnp.full((n,), cur["count"] > 0, jnp.float32)
    mem = state["mem"]
    if memory == "all":  # current data was merged into memory before training
      x, y = _gather(mem, buffers.sample_indices(k1, mem["count"], n))
      return x, y, jnp.full((n,), mem["count"] > 0, jnp.float32)
    total = mem["count"] + cur["count"]
    if sampling == "uniform":
      i = buffers.sample_indices(k1, total, n)
      from_mem = i < mem["count"]
      xm, ym = _gather(mem, jnp.where(from_mem, i, 0))
      xc, yc = _gather(cur, jnp.where(from_mem, 0, i - mem["count"]))
    else:  # balanced: first half from memory (current when memory is empty), rest from current
      half = jnp.arange(n) < n // 2
      from_mem = half & (mem["count"] > 0)
      xm, ym = _gather(mem, buffers.sample_indices(k2, mem["count"], n))
      xc, yc = _gather(cur, buffers.sample_indices(k3, cur["count"], n))
    sel = from_mem.reshape((n,) + (1,) * (xm.ndim - 1))
    return (jnp.where(sel, xm, xc), jnp.where(from_mem, ym, yc),
            jnp.full((n,), total > 0, jnp.float32))

  def update(state, batch, key):
    mask = batch["valid"] & batch["labeled"]
    y = jnp.where(mask, batch["y"], 0).astype(jnp.int32)
    state = {**state,
             "seen": state["seen"] | jnp.any(jax.nn.one_hot(y, num_classes, dtype=bool)
                                             & mask[:, None], axis=0),
             "cur": buffers.append(state["cur"], batch["x"], y, mask)}
    loss = jnp.zeros(())
    for i in range(iters_per_batch):  # static, small: one online step per iteration
      if memory == "none":
        x, yy, w = batch["x"], y, mask.astype(jnp.float32)
      else:
        xr, yr, wr = _sample({**state, "cur": buffers.clear(state["cur"])},
                             jax.random.fold_in(key, i), batch_size)
        x = jnp.concatenate([batch["x"].astype(xr.dtype), xr])
        yy = jnp.concatenate([y, yr])
        w = jnp.concatenate([mask.astype(jnp.float32), wr])
      state, loss = _sgd(state, x, yy, w)
    return state, {"passes": jnp.float32(iters_per_batch), "loss": loss}

  def _prepare(state):
    """Merges the step into an ``all`` memory, re-initialises if asked; returns the data size."""
    if memory == "all":
      cur = state["cur"]
      state = {**state, "mem": buffers.append(state["mem"], cur["x"], cur["y"],
                                              jnp.arange(cur["y"].shape[0]) < cur["count"])}
      n_data = state["mem"]["count"]
    else:
      n_data = state["cur"]["count"]
    if reinit_each_step:
      state = {**state, "params": state["init_params"], "opt": tx.init(state["init_params"])}
    return state, n_data

  def _train_chunk(state, key, start, stop):
    """``chunk`` SGD steps, unrolled; step start+i runs only if start+i < stop.

    Unrolled on purpose: XLA:CPU runs convolutions about 6x slower inside while/scan bodies
    (measured, see BUILD_NOTES.md), so the step loop lives on the host in chunks.
    """
    total = jnp.zeros(())
    for i in range(chunk):
      x, y, w = _sample(state, jax.random.fold_in(key, start + i), batch_size)
      new, loss = _sgd(state, x, y, w)
      active = start + i < stop
      state = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state)
      total = total + jnp.where(active, loss, 0.0)
    return state, total

  def _finish(state, key):
    if memory in ("reservoir", "class_balanced"):
      cur = state["cur"]
      valid = jnp.arange(cur["y"].shape[0]) < cur["count"]
      state = {**state, "mem": buffers.insert(state["mem"], cur["x"], cur["y"], valid, key,
                                              policy=memory)}
    return {**state, "cur": buffers.clear(state["cur"])}

  prepare_j, chunk_j, finish_j = jax.jit(_prepare), jax.jit(_train_chunk), jax.jit(_finish)

  def end_of_step(state, key, budget):
    """Spends ``budget`` passes (or the default epochs when budget < 0), then stores the step.

    A host loop over jitted, fixed-shape pieces: no recompiles whatever the budget.
    """
    k_train, k_mem = jax.random.split(key)
    state, n_data = prepare_j(state)
    default = math.ceil(epochs_per_step * int(n_data) / batch_size)
    budget = int(budget)
    passes = budget if (respect_budget and budget >= 0) else default
    total = 0.0
    for start in range(0, passes, chunk):
      state, loss = chunk_j(state, k_train, jnp.int32(start), jnp.int32(passes))
      total = total + loss
    state = finish_j(state, k_mem)
    return state, {"passes": jnp.float32(passes),
                   "loss": jnp.asarray(total, jnp.float32) / max(passes, 1)}

  def predict(state, x):
    logits = _apply(state["params"], x)
    return _common.mask_logits(logits, state["seen"]) if mask_unseen else logits

  hp = dict(num_classes=num_classes, model=model, optimizer=optimizer, lr=lr,
            batch_size=batch_size, memory=memory, memory_size=memory_size, sampling=sampling,
            iters_per_batch=iters_per_batch, epochs_per_step=epochs_per_step,
            reinit_each_step=reinit_each_step, respect_budget=respect_budget)
  return Learner(name=name, init=init, update=jax.jit(update), predict=jax.jit(predict),
                 end_of_step=end_of_step, hparams=hp)


@register("finetune")
def finetune(*, num_classes: int, **kw) -> Learner:
  """Naive fine-tuning: warm-started SGD on the current step's data only (forgets)."""
  return sgd_learner("finetune", num_classes=num_classes, memory="none", **kw)


@register("er")
def er(*, num_classes: int, buffer: str = "reservoir", **kw) -> Learner:
  """Experience replay with a fixed-capacity ``reservoir`` or ``class_balanced`` buffer."""
  if buffer not in ("reservoir", "class_balanced"):
    raise ValueError(f"unknown ER buffer {buffer!r}; valid: ['class_balanced', 'reservoir']")
  return sgd_learner("er", num_classes=num_classes, memory=buffer, **kw)


@register("offline")
def offline(*, num_classes: int, epochs_per_step: float = 5.0, **kw) -> Learner:
  """Offline upper bound: after each step, retrain from the initialization on all data seen."""
  kw.setdefault("reinit_each_step", True)
  kw.setdefault("respect_budget", False)
  return sgd_learner("offline", num_classes=num_classes, memory="all",
                     epochs_per_step=epochs_per_step, **kw)


_SHARED = [p for p in inspect.signature(sgd_learner).parameters
           if p not in ("name", "memory", "num_classes")]
finetune.valid_hparams = ["num_classes", *_SHARED]
er.valid_hparams = ["num_classes", "buffer", *_SHARED]
offline.valid_hparams = ["num_classes", *_SHARED]
