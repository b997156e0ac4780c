"""Gradient-trained replay baselines: fine-tuning, experience replay (ER), offline, Käding et al.

One learner with different memories:

* ``finetune``: warm-started SGD on the stream only. Each incoming batch gets ``iters_per_batch``
  SGD steps on its labelled rows as it arrives; ``end_of_step`` then spends the rest of the step's
  budget on batches drawn uniformly from the step's data. Forgets.
* ``er``: online experience replay (Chaudhry et al. 2019, "On Tiny Episodic Memories"): each
  incoming batch is trained together with an equal-size batch drawn uniformly from a fixed-capacity
  memory (``buffer``: ``reservoir`` or ``class_balanced``, ``cljax.ops.buffers``), then enters the
  memory. ``end_of_step`` spends what remains of the step's budget on batches drawn uniformly from
  the memory (Prabhu et al. 2023's budgeted ER: with a memory as large as the stream this is their
  "uniform over all stored data"), or half from memory and half from the step's data
  (``sampling="balanced"``).
* ``offline``: keeps every example and, after each step, retrains from the initial parameters on
  all of it (the joint upper bound and the reference for Ω; not budgeted).
* ``finetune`` with ``old_fraction=λ`` (``finetune_kading`` has the paper's settings): incremental
  fine-tuning of Käding et al. (ACCV-W 2016). Every earlier example is kept; at the end of a step
  each training example comes from the earlier data with probability λ and from the step's update
  set otherwise (``sample_old_new``); ``iterations="epochs"`` sets the SGD iterations to
  ``epochs_per_step`` epochs over all data seen so far. ``grow_head=True`` makes the fixed
  ``num_classes`` output layer behave like a growing one.

One pass = one SGD step on ``batch_size`` rows; an online step on B incoming rows plus B replayed
rows costs 2B / ``batch_size`` passes (by the rows computed, padding included).
"""

from __future__ import annotations

import numbers
import warnings
from typing import Optional, Union

import jax
import jax.numpy as jnp

from cljax import learner as contract
from cljax import optim
from cljax.learner import Learner
from cljax.learners.registry import register
from cljax.models.pure import Net
from cljax.ops import buffers
from cljax.ops.losses import cross_entropy, mask_logits, seen_classes
from cljax.ops import sharding
from cljax.ops.buffers import append as append_store
from cljax.train.loop import Loop, classifier_step

MEMORIES = ("none", "reservoir", "class_balanced", "all", "past")
SAMPLINGS = ("uniform", "balanced")

# Käding et al. 2016, Sec. 4: SGD lr 1e-3, momentum 0.9, L2 weight decay 5e-4, mini-batches of 64;
# one epoch over all data seen so far per update; λ = 0.75 (as good as λ = 1 while the new data is
# trained on at once). Updates happen at step ends (iters_per_batch = 0).
KADING_DEFAULTS = dict(optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, batch_size=64,
                       iterations="epochs", epochs_per_step=1.0, old_fraction=0.75,
                       grow_head=True, iters_per_batch=0)


def sample_old_new(key: jax.Array, n_old: jax.Array, n_new: jax.Array, n: int,
                   old_fraction) -> jax.Array:
  """Käding et al.'s old/new mixing: from_old [n] bool, where each training example comes from.

  Each of the n examples comes from the earlier data with probability ``old_fraction`` (λ, float
  or [] array). With no earlier data (``n_old`` 0) every example comes from the update set; with an
  empty update set (``n_new`` 0), from the earlier data (so λ = 1 at the first update trains on
  the new data rather than on nothing).
  """
  from_old = jax.random.uniform(key, (n,)) < old_fraction
  return jnp.where(n_old <= 0, False, jnp.where(n_new <= 0, True, from_old))


def _check_choice(name, value, valid):
  if value not in valid:
    raise ValueError(f"unknown {name} {value!r}; valid: {list(valid)}")


def training_batch(state: dict, key: jax.Array, n: int, memory: str, sampling: str) -> tuple:
  """An end-of-step training batch of a replay learner's ``state``: x [n, ...], y [n], w [n].

  ``none``: uniform from the step's data; ``past``: Käding's λ mix of earlier data and the update
  set (``sample_old_new``); ``balanced``: the first n // 2 rows from memory (from the step's
  data while the memory is empty), the rest from the step's data; otherwise uniform from memory.
  ``w`` is 0 on rows drawn from an empty store.
  """
  store = buffers.get("append")
  if memory == "none":
    s = store.sample(state["cur"], key, n)
    return s.x, s.y, s.weight
  policy = buffers.get("append" if memory in ("all", "past") else memory)
  if memory == "past":  # mem = earlier steps, cur = this update set
    k_src, k_old, k_new = jax.random.split(key, 3)
    old = policy.sample(state["mem"], k_old, n)
    new = store.sample(state["cur"], k_new, n)
    from_old = sample_old_new(k_src, state["mem"].count, state["cur"].count, n,
                              state["old_fraction"])
  elif sampling == "balanced" and memory != "all":
    k_mem, k_cur = jax.random.split(key)
    old = policy.sample(state["mem"], k_mem, n)
    new = store.sample(state["cur"], k_cur, n)
    from_old = (jnp.arange(n) < n // 2) & (jnp.sum(old.weight) > 0)
  else:
    s = policy.sample(state["mem"], key, n)
    return s.x, s.y, s.weight
  sel = from_old.reshape((n,) + (1,) * (old.x.ndim - 1))
  return (jnp.where(sel, old.x, new.x), jnp.where(from_old, old.y, new.y),
          jnp.where(from_old, old.weight, new.weight))


def replay_learner(name: str, *, num_classes: int, model: str = "mlp",
                   model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
                   momentum: float = 0.9, weight_decay: float = 0.0, batch_size: int = 32,
                   memory: str = "none", memory_size: int = 500, sampling: str = "uniform",
                   iters_per_batch: int = 1, epochs_per_step: float = 5.0,
                   max_step_size: int = 4096, stream_size: Optional[int] = None,
                   reinit_each_step: bool = False, budgeted: bool = True,
                   mask_unseen: bool = True, chunk: int = 8,
                   init_params: Optional[dict] = None, old_fraction: Optional[float] = None,
                   iterations: Union[str, int] = "budget", grow_head: bool = False) -> Learner:
  """Builds a replay-family learner (see the module docstring).

  Args:
    num_classes: K, the size of the output layer (fixed; unseen classes are masked).
    model: a ``cljax.models`` name (``mlp`` works on any input shape; ``cnn`` for images,
      ``resnet18``, ViTs); ``model_kwargs`` go to its constructor.
    optimizer, lr, momentum, weight_decay: see ``cljax.optim.build``.
    batch_size: rows of one SGD step at the end of a step (one forward-backward pass).
    memory: one of MEMORIES (``none``: finetune; ``reservoir``/``class_balanced``: ER's memory of
      ``memory_size`` examples; ``all``: offline, everything seen; ``past``: Käding's earlier data).
    sampling: ER's end-of-step batches: ``uniform`` over the memory, or ``balanced`` (half memory,
      half the step's data).
    iters_per_batch: online SGD steps per incoming batch (ER: each on the batch plus as many
      replayed rows); 0 trains only at step ends.
    epochs_per_step: passes at the end of a step when ``end_of_step`` gets no budget, in epochs
      over the step's rows (over all stored rows for ``all``).
    max_step_size: examples of one time step the step store holds (finetune, balanced ER, Käding;
      experiments pass the stream's largest step). Rows beyond it are dropped with a warning.
    stream_size: examples of the whole stream; ``all`` and ``past`` keep them all and need it.
    reinit_each_step: restart from the initial parameters and a fresh optimizer every step.
    budgeted: False ignores the budget and always trains the default passes (offline).
    mask_unseen: ``predict`` gives unseen classes a large negative logit.
    chunk: SGD steps per jitted call at step ends (``cljax.train.loop.Loop``, unrolled).
    init_params: start from these parameters (a pure dict of the same network, e.g. a
      base-initialised one) instead of a random initialisation.
    old_fraction: λ in [0, 1], only with ``memory="past"`` (``sample_old_new``).
    iterations: SGD steps at the end of a step: ``"budget"`` (the budget given, or the default
      epochs), ``"epochs"`` (``epochs_per_step`` epochs over all examples seen so far, whatever
      the budget) or an int N.
    grow_head: a growing output layer on fixed shapes: logits of unseen classes are left out of
      the training softmax and their head rows (kernel column, bias) get no update at all, so a
      class's row enters training exactly as initialised when the class first appears. Needs a
      model whose output layer is ``head``.
  """
  _check_choice("memory", memory, MEMORIES)
  _check_choice("sampling", sampling, SAMPLINGS)
  if memory in ("all", "past"):
    if stream_size is None:
      raise ValueError(f"learner {name!r} keeps every example of the stream: give stream_size "
                       "(examples in the stream)")
    memory_size = int(stream_size)
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
                   ("memory_size", memory_size), ("chunk", chunk)):
    if int(val) < 1:
      raise ValueError(f"{key} must be >= 1, got {val}")
  if int(iters_per_batch) < 0:
    raise ValueError(f"iters_per_batch must be >= 0, got {iters_per_batch}")
  if float(epochs_per_step) < 0:
    raise ValueError(f"epochs_per_step must be >= 0, got {epochs_per_step}")
  tx = optim.build(optimizer, lr, momentum=momentum, weight_decay=weight_decay)
  net = Net.named(model, num_classes, **(model_kwargs or {}))
  store = buffers.get("append")  # a time step's data; offline's and Käding's keep-everything store
  policy = None if memory == "none" else buffers.get(
      "append" if memory in ("all", "past") else memory)
  keep_step = memory in ("none", "past") or (memory in ("reservoir", "class_balanced")
                                             and sampling == "balanced")
  replay_online = memory in ("reservoir", "class_balanced")
  insert_online = memory in ("reservoir", "class_balanced", "all")  # Käding's: at step ends

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    k_net, k_mem, k_cur = jax.random.split(key, 3)
    params = net.init(k_net, x.shape[1:], init_params)
    if grow_head and not ("head" in params and {"kernel", "bias"} <= set(params["head"])):
      raise ValueError(f"learner {name!r}: grow_head needs a model whose output layer is "
                       f"'head' (kernel, bias); {net} has {sorted(params)}")
    example = jax.ShapeDtypeStruct(x.shape[1:], jnp.float32)
    state = {"params": params, "opt": tx.init(params), "seen": jnp.zeros((num_classes,), bool),
             "step_rows": jnp.zeros((), jnp.int32)}
    if keep_step:
      state["cur"] = store.init(k_cur, max_step_size, example, num_classes)
    if policy is not None:
      state["mem"] = policy.init(k_mem, memory_size, example, num_classes)
    if reinit_each_step:
      state["init_params"] = params
    if iterations == "epochs":
      state["n_seen"] = jnp.zeros((), jnp.int32)  # labelled examples of all finished steps
    if memory == "past":  # an array, not a constant: one compiled program serves every λ
      state["old_fraction"] = jnp.float32(old_fraction)
    return state

  def _loss(seen):
    def loss_of_logits(p, logits, y, w):
      del p
      if grow_head:  # unseen classes are not in the network yet: out of the softmax
        logits = mask_logits(logits, seen)
      return cross_entropy(logits, y, w)
    return loss_of_logits

  def _sgd(params, opt, seen, x, y, w):
    def keep_unseen_rows(upd):
      if not grow_head:
        return upd
      head = upd["head"]
      return {**upd, "head": {**head, "kernel": jnp.where(seen[None, :], head["kernel"], 0.0),
                              "bias": jnp.where(seen, head["bias"], 0.0)}}
    loss_fn = _loss(seen)
    return classifier_step(net, tx, params, opt, x, w,
                           lambda p, logits: loss_fn(p, logits, y, w), edit=keep_unseen_rows)

  def update(state, batch, key):
    _, lab = contract.masks(batch)
    x = jnp.asarray(batch["x"], jnp.float32)
    y = jnp.where(lab, batch["y"], 0).astype(jnp.int32)
    seen = seen_classes(state["seen"], y, lab)
    params, opt, losses = state["params"], state["opt"], []
    rows = 0
    for i in range(iters_per_batch):  # static, small
      xb, yb, wb = x, y, lab.astype(jnp.float32)
      if replay_online:
        r = policy.sample(state["mem"], jax.random.fold_in(key, i), x.shape[0])
        xb, yb, wb = (jnp.concatenate([x, r.x.astype(x.dtype)]), jnp.concatenate([y, r.y]),
                      jnp.concatenate([wb, r.weight]))
      xb, yb, wb = sharding.data_rows((xb, yb, wb))
      params, opt, loss = _sgd(params, opt, seen, xb, yb, wb)
      losses.append(loss)
      rows += xb.shape[0]
    state = {**state, "params": params, "opt": opt, "seen": seen,
             "step_rows": state["step_rows"] + jnp.sum(lab).astype(jnp.int32)}
    if keep_step:
      state["cur"] = store.insert(state["cur"], x, y, lab)
    if insert_online:
      state["mem"] = policy.insert(state["mem"], x, y, lab)
    loss = jnp.mean(jnp.stack(losses)) if losses else jnp.float32(jnp.nan)
    return state, contract.info(rows / batch_size, loss)

  def _step(carry, data, key, i, stop):
    del i, stop
    params, opt = carry
    x, y, w = sharding.data_rows(training_batch(data, key, batch_size, memory, sampling))
    params, opt, loss = _sgd(params, opt, data["seen"], x, y, w)
    return (params, opt), loss[None]

  loop = Loop(_step, chunk=chunk, unroll=True)

  @jax.jit
  def _prepare(state):
    """Re-initialises if asked; returns (state, rows the default epochs run over)."""
    n_data = state["step_rows"] if memory != "all" else state["mem"].count
    if iterations == "epochs":  # epochs over everything seen so far, this step included
      n_seen = state["n_seen"] + state["step_rows"]
      state = {**state, "n_seen": n_seen}
      n_data = n_seen
    if reinit_each_step:
      state = {**state, "params": state["init_params"], "opt": tx.init(state["init_params"])}
    return state, n_data

  @jax.jit
  def _finish(state):
    if memory == "past":  # the update set becomes old data
      cur = state["cur"]
      state = {**state, "mem": policy.insert(state["mem"], cur.x, cur.y,
                                             jnp.arange(cur.y.shape[0]) < cur.count)}
    if keep_step:
      state = {**state, "cur": append_store.clear(state["cur"])}
    return {**state, "step_rows": jnp.zeros((), jnp.int32)}

  def end_of_step(state, key, budget=None, progress=None):
    """Spends ``budget`` passes (None: the default epochs), then ends the step."""
    if keep_step:
      dropped = int(state["cur"].seen) - int(state["cur"].count)
      if dropped > 0:
        warnings.warn(f"learner {name!r}: {dropped} examples of this step did not fit its step "
                      f"store (max_step_size={max_step_size}) and were not trained on at the end "
                      "of the step; pass a larger max_step_size", stacklevel=2)
    state, n_data = _prepare(state)
    default = contract.default_passes(epochs_per_step, int(n_data), batch_size)
    if iterations == "budget":
      passes = budget if (budgeted and budget is not None) else default
    elif iterations == "epochs":
      passes = default
    else:
      passes = int(iterations)
    (params, opt), sums = loop((state["params"], state["opt"]), state, key, int(passes),
                             progress=progress)
    state = _finish({**state, "params": params, "opt": opt})
    loss = sums[0] / passes if sums is not None else jnp.float32(jnp.nan)
    return state, contract.info(passes, loss)

  @jax.jit
  def predict(state, x):
    logits = net.apply(state["params"], jnp.asarray(x, jnp.float32))
    return mask_logits(logits, state["seen"]) if mask_unseen else logits

  hp = dict(num_classes=num_classes, model=model, model_kwargs=model_kwargs, optimizer=optimizer,
            lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
            memory=memory, memory_size=memory_size, sampling=sampling,
            iters_per_batch=iters_per_batch, epochs_per_step=epochs_per_step,
            max_step_size=max_step_size, reinit_each_step=reinit_each_step,
            old_fraction=old_fraction, iterations=iterations, grow_head=grow_head, chunk=chunk,
            warm_start=init_params is not None)
  return Learner(name=name, init=init, update=jax.jit(update), end_of_step=end_of_step,
                 predict=predict, hparams=hp, budgeted=budgeted and iterations == "budget")


_NET_INPUTS = ("model", "model_kwargs", "batch_size", "init_params")


@register("finetune", inputs=_NET_INPUTS + ("max_step_size", "stream_size"))
def finetune(*, num_classes: int, model: str = "mlp",
             model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
             momentum: float = 0.9, weight_decay: float = 0.0, batch_size: int = 32,
             iters_per_batch: int = 1, epochs_per_step: float = 5.0, max_step_size: int = 4096,
             stream_size: Optional[int] = None, mask_unseen: bool = True, chunk: int = 8,
             init_params: Optional[dict] = None, old_fraction: Optional[float] = None,
             iterations: Union[str, int] = "budget", grow_head: bool = False) -> Learner:
  """Fine-tuning, warm-started from the previous step, learning from each batch as it arrives.

  Without ``old_fraction``: naive fine-tuning on the stream only (forgets). With
  ``old_fraction=λ``: Käding et al.'s incremental fine-tuning, keeping all earlier data and mixing
  it into every update with probability λ (needs ``stream_size``). Arguments: ``replay_learner``.
  """
  return replay_learner(
      "finetune", num_classes=num_classes, model=model, model_kwargs=model_kwargs,
      optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
      batch_size=batch_size, memory="none" if old_fraction is None else "past",
      iters_per_batch=iters_per_batch, epochs_per_step=epochs_per_step,
      max_step_size=max_step_size, stream_size=stream_size, mask_unseen=mask_unseen, chunk=chunk,
      init_params=init_params, old_fraction=old_fraction, iterations=iterations,
      grow_head=grow_head)


@register("finetune_kading", inputs=_NET_INPUTS + ("max_step_size", "stream_size"))
def finetune_kading(*, num_classes: int, stream_size: Optional[int] = None,
                    model: str = "mlp", model_kwargs: Optional[dict] = None,
                    optimizer: str = KADING_DEFAULTS["optimizer"],
                    lr: float = KADING_DEFAULTS["lr"],
                    momentum: float = KADING_DEFAULTS["momentum"],
                    weight_decay: float = KADING_DEFAULTS["weight_decay"],
                    batch_size: int = KADING_DEFAULTS["batch_size"],
                    iters_per_batch: int = KADING_DEFAULTS["iters_per_batch"],
                    epochs_per_step: float = KADING_DEFAULTS["epochs_per_step"],
                    max_step_size: int = 4096, mask_unseen: bool = True, chunk: int = 8,
                    init_params: Optional[dict] = None,
                    old_fraction: float = KADING_DEFAULTS["old_fraction"],
                    iterations: Union[str, int] = KADING_DEFAULTS["iterations"],
                    grow_head: bool = KADING_DEFAULTS["grow_head"]) -> Learner:
  """``finetune`` with Käding et al.'s settings as defaults (``KADING_DEFAULTS``).

  Meant to start from a base-initialised network (``init_params``; experiments pass it when
  ``config.base_init.classes`` > 0); ``add_past_data`` records the base set as earlier data.
  """
  return finetune(num_classes=num_classes, model=model, model_kwargs=model_kwargs,
                  optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
                  batch_size=batch_size, iters_per_batch=iters_per_batch,
                  epochs_per_step=epochs_per_step, max_step_size=max_step_size,
                  stream_size=stream_size, mask_unseen=mask_unseen, chunk=chunk,
                  init_params=init_params, old_fraction=old_fraction, iterations=iterations,
                  grow_head=grow_head)


@register("er", inputs=_NET_INPUTS + ("max_step_size",))
def er(*, num_classes: int, buffer: str = "reservoir", memory_size: int = 500,
       sampling: str = "uniform", model: str = "mlp",
       model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
       momentum: float = 0.9, weight_decay: float = 0.0, batch_size: int = 32,
       iters_per_batch: int = 1, epochs_per_step: float = 5.0, max_step_size: int = 4096,
       mask_unseen: bool = True, chunk: int = 8,
       init_params: Optional[dict] = None) -> Learner:
  """Online experience replay with a ``reservoir`` or ``class_balanced`` memory of
  ``memory_size`` examples, budgeted at step ends. Arguments: ``replay_learner``."""
  if buffer not in ("reservoir", "class_balanced"):
    raise ValueError(f"unknown ER buffer {buffer!r}; valid: ['class_balanced', 'reservoir']")
  return replay_learner(
      "er", num_classes=num_classes, model=model, model_kwargs=model_kwargs, optimizer=optimizer,
      lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size, memory=buffer,
      memory_size=memory_size, sampling=sampling, iters_per_batch=iters_per_batch,
      epochs_per_step=epochs_per_step, max_step_size=max_step_size, mask_unseen=mask_unseen,
      chunk=chunk, init_params=init_params)


@register("offline", inputs=_NET_INPUTS + ("stream_size",))
def offline(*, num_classes: int, stream_size: Optional[int] = None,
            epochs_per_step: float = 5.0, model: str = "mlp",
            model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
            momentum: float = 0.9, weight_decay: float = 0.0, batch_size: int = 32,
            mask_unseen: bool = True, chunk: int = 8,
            init_params: Optional[dict] = None) -> Learner:
  """Offline upper bound: after each step, retrain from the initialization (``init_params`` when
  given) on all data seen, ``epochs_per_step`` epochs, whatever the budget. Needs
  ``stream_size``. Arguments: ``replay_learner``."""
  return replay_learner(
      "offline", num_classes=num_classes, model=model, model_kwargs=model_kwargs,
      optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
      batch_size=batch_size, memory="all", iters_per_batch=0, epochs_per_step=epochs_per_step,
      stream_size=stream_size, reinit_each_step=True, budgeted=False, mask_unseen=mask_unseen,
      chunk=chunk, init_params=init_params)


def add_past_data(state: dict, x: jax.Array, y: jax.Array) -> dict:
  """Stores x [N, ...], y [N] int as earlier data of a ``memory="past"`` learner, without training.

  For a base-initialisation set the network was already trained on (``init_params``): its
  classes become seen and its examples old data for λ and for ``iterations="epochs"``.
  """
  if "mem" not in state or "old_fraction" not in state:
    raise ValueError("add_past_data needs a finetune learner with old_fraction (memory='past')")
  y = jnp.asarray(y, jnp.int32)
  mem = _append_all(state["mem"], jnp.asarray(x, jnp.float32), y)
  if int(mem.count) != int(state["mem"].count) + int(y.shape[0]):
    raise ValueError(f"add_past_data: the store holds {mem.y.shape[0]} examples; raise "
                     "stream_size")
  out = {**state, "mem": mem, "seen": state["seen"].at[y].set(True)}
  if "n_seen" in state:
    out["n_seen"] = state["n_seen"] + y.shape[0]
  return out


@jax.jit
def _append_all(mem, x, y):
  return buffers.get("append").insert(mem, x, y, jnp.ones(y.shape, bool))
