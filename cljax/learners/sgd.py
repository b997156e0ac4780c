"""Gradient-trained baselines: naive fine-tuning, experience replay (ER) and the offline learner.

All three are one learner with different memories (``memory``):

* ``finetune`` (``memory="none"``): warm-started SGD on the current time step's data only.
* ``er`` (``memory="reservoir"`` or ``"class_balanced"``): a fixed-capacity buffer of past
  examples; training batches are drawn uniformly from buffer ∪ current step (Prabhu et al. 2023's
  strong budgeted baseline) or half/half (``sampling="balanced"``).
* ``offline`` (``memory="all"``): keeps every example seen and, after each time step, retrains
  from the initial parameters on all of it (the joint upper bound and the reference for Omega).
* ``finetune`` with ``old_fraction=λ`` (``memory="past"``): incremental fine-tuning of Käding et
  al. (ACCV-W 2016; ``finetune_kading`` has the paper's settings as defaults). Warm-started from
  the previous step; every earlier example is kept; each training example of an update comes from
  the earlier data with probability λ and from the new update set otherwise (``sample_old_new``).
  ``iterations="epochs"`` sets the SGD iterations of an update to ``epochs_per_step`` epochs over
  all data seen so far (or a constant ``iterations=N``). ``grow_head=True`` makes the fixed
  ``num_classes`` output layer behave like a growing one (see ``sgd_learner``).

Per incoming batch, ``update`` stores the labelled rows in a current-step buffer and optionally
takes ``iters_per_batch`` online SGD steps (the incoming rows plus a replayed batch). After the
step's last batch, ``end_of_step`` spends the step's remaining budget (one pass = one SGD step
on ``batch_size`` examples), then moves the step's data into the memory.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Optional, Union

import jax
import jax.numpy as jnp

from cljax.learner import Learner, register
from cljax.learners import _common
from cljax.ops import buffers
from cljax.ops import sharding

MEMORIES = ("none", "reservoir", "class_balanced", "all", "past")
SAMPLINGS = ("uniform", "balanced")


def sgd_learner(name: str, *, num_classes: int, model: str = "cnn",
                model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
                momentum: float = 0.9, weight_decay: float = 0.0, batch_size: int = 32,
                memory: str = "none", memory_size: int = 200, sampling: str = "uniform",
                iters_per_batch: int = 0, epochs_per_step: float = 2.0,
                max_step_size: int = 4096, stream_size: Optional[int] = None,
                reinit_each_step: bool = False, respect_budget: bool = True,
                mask_unseen: bool = True, chunk: int = 8,
                init_params: Optional[dict] = None, old_fraction: Optional[float] = None,
                iterations: Union[str, int] = "budget", grow_head: bool = False) -> Learner:
  """Builds a replay-family learner (see module docstring).

  Args:
    num_classes: K, the size of the output layer (fixed; unseen classes are masked).
    model: a name from ``cljax.models.names()``; ``model_kwargs`` go to its constructor.
    optimizer, lr, momentum, weight_decay: see ``_common.optimizer``.
    batch_size: examples per SGD step (one forward-backward pass of the budget).
    memory: one of MEMORIES; ``memory_size`` is its capacity in examples (``all`` and ``past``
      hold the whole stream: ``all`` merges each step before training, ``past`` holds the steps
      before the current one and takes ``old_fraction``).
    sampling: how training batches mix memory and current data (one of SAMPLINGS).
    iters_per_batch: online SGD steps per incoming batch (0: train only at the end of a step).
    epochs_per_step: default passes at the end of a step, in epochs over the step's data
      (over all stored data for ``memory="all"``); used when the runner sets no budget.
    max_step_size: capacity of the current-step buffer (the runner passes the stream's largest
      time step).
    stream_size: total examples in the stream (the runner passes it; ``memory="all"`` and
      ``"past"`` need it).
    reinit_each_step: restart from the initial parameters and a fresh optimizer every step.
    respect_budget: if False, ignore the runner's budget and always train the default passes.
    mask_unseen: predict gives unseen classes a large negative logit.
    chunk: SGD steps per jitted call at the end of a step (unrolled; see ``_train_chunk``).
    init_params: start from these parameters (a pure dict of the same model, e.g. a
      base-initialised network) instead of a random initialisation (warm start).
    old_fraction: λ in [0, 1], only with ``memory="past"``: each training example of an update is
      drawn from the earlier data (all steps before this one) with probability λ and from the
      current update set with probability 1 - λ (``sample_old_new``). λ = 0 trains on the new
      data only; λ = 1 on the old data only (new data is first trained on at the next update,
      when it has become old). When no earlier data exists yet (the first update) every example
      comes from the update set whatever λ; when the update set is empty, from the old data.
    iterations: SGD iterations at the end of a step. ``"budget"``: the runner's budget (the
      default epochs when it sets none, or when ``respect_budget=False``); ``"epochs"``:
      ceil(epochs_per_step * examples seen so far (earlier steps + this one) / batch_size),
      whatever the budget; an int N: N iterations per update, whatever the budget.
    grow_head: a growing output layer on fixed shapes: the head has ``num_classes`` rows from
      the start (no recompiles as classes arrive) and a ``seen`` mask; logits of unseen classes
      are left out of the training softmax and the head rows (kernel column, bias) of unseen
      classes get no update at all (not even weight decay). So a class's row enters training
      exactly as initialised (the random initial row, or the row given in ``init_params``) when
      the class first appears, and rows of seen classes keep their trained values (fine-tuning
      then changes them, as in the paper). Needs a model whose output layer is ``head``.
  """
  if memory not in MEMORIES:
    raise ValueError(f"unknown memory {memory!r}; valid: {list(MEMORIES)}")
  if sampling not in SAMPLINGS:
    raise ValueError(f"unknown sampling {sampling!r}; valid: {list(SAMPLINGS)}")
  if memory in ("all", "past"):
    if stream_size is None:
      raise ValueError(f"memory={memory!r} needs stream_size (the number of examples in the "
                       "stream)")
    memory_size = stream_size
  if (old_fraction is None) != (memory != "past"):
    raise ValueError("old_fraction (λ) goes with memory='past' (a store of all earlier data), "
                     f"got memory={memory!r}, old_fraction={old_fraction}")
  if old_fraction is not None and not 0.0 <= float(old_fraction) <= 1.0:
    raise ValueError(f"old_fraction must be in [0, 1], got {old_fraction}")
  if not (iterations in ("budget", "epochs") or
          (isinstance(iterations, numbers.Integral) and not isinstance(iterations, bool)
           and iterations >= 0)):
    raise ValueError(f"iterations must be 'budget', 'epochs' or an int >= 0, got {iterations!r}")
  for key, val in (("batch_size", batch_size), ("max_step_size", max_step_size),
                   ("memory_size", memory_size), ("num_classes", num_classes)):
    if int(val) < 1:
      raise ValueError(f"{key} must be >= 1, got {val}")
  tx = _common.optimizer(optimizer, lr, momentum, weight_decay)
  net = _common.LazyModel(name, model, num_classes, model_kwargs)
  _apply = net.apply

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    params = net.build(key, x, init_params)
    if grow_head and not ("head" in params and {"kernel", "bias"} <= set(params["head"])):
      raise ValueError(f"learner {name!r}: grow_head needs a model whose output layer is "
                       f"'head' (kernel, bias); {model!r} has {sorted(params)}")
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
    if iterations == "epochs":
      state["n_seen"] = jnp.zeros((), jnp.int32)  # labelled examples of all finished steps
    if memory == "past":  # an array, not a constant: one compiled program serves every λ
      state["old_fraction"] = jnp.float32(old_fraction)
    return state

  def _loss_of_logits(logits, y, w, seen):
    if grow_head:  # unseen classes are not in the network yet: out of the softmax
      logits = _common.mask_logits(logits, seen)
    return _common.cross_entropy(logits, y, w)

  def _sgd(state, x, y, w):
    seen = state["seen"]

    def keep_unseen_rows(upd):
      if not grow_head:
        return upd
      # rows of unseen classes stay exactly as initialised (no weight decay either)
      head = upd["head"]
      return {**upd, "head": {**head, "kernel": jnp.where(seen[None, :], head["kernel"], 0.0),
                              "bias": jnp.where(seen, head["bias"], 0.0)}}

    params, opt, loss = _common.train_step(
        net, tx, state["params"], state["opt"], x, w,
        lambda p, logits: _loss_of_logits(logits, y, w, seen), keep_unseen_rows)
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
    if memory == "past":  # mem = earlier steps, cur = this update set
      from_old, i = sample_old_new(k1, mem["count"], cur["count"], n, state["old_fraction"])
      xm, ym = _gather(mem, jnp.where(from_old, i, 0))
      xc, yc = _gather(cur, jnp.where(from_old, 0, i))
      sel = from_old.reshape((n,) + (1,) * (xm.ndim - 1))
      return (jnp.where(sel, xm, xc), jnp.where(from_old, ym, yc),
              jnp.full((n,), mem["count"] + cur["count"] > 0, jnp.float32))
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
        x, yy, w = sharding.data_rows((jnp.concatenate([batch["x"].astype(xr.dtype), xr]),
                                       jnp.concatenate([y, yr]),
                                       jnp.concatenate([mask.astype(jnp.float32), wr])))
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
    if iterations == "epochs":  # epochs over everything seen so far, this step included
      n_seen = state["n_seen"] + state["cur"]["count"]
      state = {**state, "n_seen": n_seen}
      n_data = n_seen
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
      x, y, w = sharding.data_rows(_sample(state, jax.random.fold_in(key, start + i), batch_size))
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
    if memory == "past":  # the update set becomes old data
      cur = state["cur"]
      state = {**state, "mem": buffers.append(state["mem"], cur["x"], cur["y"],
                                              jnp.arange(cur["y"].shape[0]) < cur["count"])}
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
    if iterations == "budget":
      passes = budget if (respect_budget and budget >= 0) else default
    elif iterations == "epochs":
      passes = default
    else:
      passes = int(iterations)
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
            reinit_each_step=reinit_each_step,
            # the runner warns about over-budget steps of learners that respect the budget
            respect_budget=respect_budget and iterations == "budget",
            momentum=momentum, weight_decay=weight_decay, old_fraction=old_fraction,
            iterations=iterations, grow_head=grow_head, max_step_size=max_step_size)
  return Learner(name=name, init=init, update=jax.jit(update), predict=jax.jit(predict),
                 end_of_step=end_of_step, hparams=hp)


def sample_old_new(key: jax.Array, n_old: jax.Array, n_new: jax.Array, n: int,
                   old_fraction: float) -> tuple[jax.Array, jax.Array]:
  """Käding et al.'s old/new mixing: where each of n training examples comes from.

  Args:
    key: PRNG key.
    n_old, n_new: [] int, examples in the store of earlier data and in the update set.
    n: examples to draw (static).
    old_fraction: λ in [0, 1] (float or [] array), the probability that an example comes from
      the earlier data.

  Returns:
    from_old [n] bool and index [n] int32 (into the old store where ``from_old``, into the update
    set elsewhere), uniform with replacement within each source. With no old data every example
    comes from the update set; with an empty update set, from the old data (so λ = 1 at the first
    update trains on the new data rather than on nothing).
  """
  k_src, k_old, k_new = jax.random.split(key, 3)
  from_old = jax.random.uniform(k_src, (n,)) < old_fraction
  from_old = jnp.where(n_old <= 0, False, jnp.where(n_new <= 0, True, from_old))
  i_old = buffers.sample_indices(k_old, n_old, n)
  i_new = buffers.sample_indices(k_new, n_new, n)
  return from_old, jnp.where(from_old, i_old, i_new).astype(jnp.int32)


def add_past_data(state: dict, x: jax.Array, y: jax.Array) -> dict:
  """Stores x [N, ...], y [N] int as earlier data of a ``memory="past"`` learner, without training.

  For a base-initialisation set the network was already trained on (``init_params``): its
  classes become seen and its examples old data for λ and for ``iterations="epochs"``.
  """
  if "mem" not in state:
    raise ValueError("add_past_data needs a learner with a memory (memory='past')")
  y = jnp.asarray(y, jnp.int32)
  mask = jnp.ones(y.shape, bool)
  mem = buffers.append(state["mem"], jnp.asarray(x), y, mask)
  if int(mem["count"]) != int(state["mem"]["count"]) + int(y.shape[0]):
    raise ValueError(f"add_past_data: the memory holds {buffers.capacity(state['mem'])} "
                     "examples; raise stream_size")
  out = {**state, "mem": mem,
         "seen": state["seen"].at[y].set(True)}
  if "n_seen" in state:
    out["n_seen"] = state["n_seen"] + y.shape[0]
  return out


# The paper's configuration (Käding et al. 2016, Sec. 4): SGD lr 1e-3, momentum 0.9, L2 weight
# decay 5e-4, mini-batches of 64; one epoch over all data seen so far per update; λ = 0.75 (their
# finding: as good as λ = 1 while the new data is trained on at once).
KADING_DEFAULTS = dict(optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, batch_size=64,
                       iterations="epochs", epochs_per_step=1.0, old_fraction=0.75,
                       grow_head=True)


@register("finetune")
def finetune(*, num_classes: int, old_fraction: Optional[float] = None, **kw) -> Learner:
  """Fine-tuning, warm-started from the previous step.

  Without ``old_fraction``: naive fine-tuning on the current step's data only (forgets). With
  ``old_fraction=λ``: Käding et al.'s incremental fine-tuning, keeping all earlier data and
  mixing it into every update with probability λ (``memory="past"``; needs ``stream_size``).
  """
  memory = "none" if old_fraction is None else "past"
  return sgd_learner("finetune", num_classes=num_classes, memory=memory,
                     old_fraction=old_fraction, **kw)


@register("finetune_kading")
def finetune_kading(*, num_classes: int, **kw) -> Learner:
  """``finetune`` with the paper's settings as defaults (``KADING_DEFAULTS``; any overridable).

  Meant to start from a base-initialised network (``init_params``; the runner passes it when
  ``config.base_init.classes`` > 0).
  """
  for k, v in KADING_DEFAULTS.items():
    kw.setdefault(k, v)
  return finetune(num_classes=num_classes, **kw)


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
finetune_kading.valid_hparams = ["num_classes", *_SHARED]
er.valid_hparams = ["num_classes", "buffer", *_SHARED]
offline.valid_hparams = ["num_classes", *_SHARED]
