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
  ``num_classes`` output layer behave like a growing one. ``pretrained_first_step=True`` files the
  first time step (the base set ``init_params`` was trained on) as earlier data without training.

One pass = one SGD step on ``batch_size`` rows; an online step on B incoming rows plus B replayed
rows costs 2B / ``batch_size`` passes (by the rows computed, padding included).

The file reads top to bottom: the state, the static settings (``Setup``), the step functions
(pure, jitted by the factory), the factory ``replay_learner`` that composes them, and the
registered wrappers.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from cljax import learner as contract
from cljax import optim
from cljax.learner import Learner
from cljax.learners.registry import register
from cljax.models.pure import Net
from cljax.ops import buffers
from cljax.ops import sharding
from cljax.ops.buffers import append as append_store
from cljax.ops.losses import cross_entropy, mask_logits, seen_classes
from cljax.train import early_stop as early_stop_lib
from cljax.train.loop import Loop, classifier_step

MEMORIES = ("none", "reservoir", "class_balanced", "all", "past")
SAMPLINGS = ("uniform", "balanced")


class State(NamedTuple):
  """The state of a replay-family learner (K = ``num_classes``).

  params: the network's parameters (a pure dict of ``cljax.models.pure.Net``).
  opt: the optimizer state of ``params``.
  seen: [K] bool, classes with a labelled example so far (``predict`` masks the others).
  step_rows: [] int32, labelled examples of the current time step.
  n_seen: [] int32, labelled examples of all finished time steps (``iterations="epochs"`` counts
    its epochs over them).
  steps: [] int32, time steps ended so far.
  cur: the current step's labelled rows, an ``append`` store of ``max_step_size`` rows (finetune,
    balanced ER, Käding); None when the learner keeps no step store.
  mem: the memory, a ``cljax.ops.buffers`` state: ER's ``reservoir``/``class_balanced`` memory of
    ``memory_size`` rows, offline's store of everything (``all``) or Käding's earlier data
    (``past``), both ``stream_size`` rows; None for plain fine-tuning.
  init_params: the parameters every step restarts from (``reinit_each_step``: offline); else None.
  old_fraction: [] float32 λ (``memory="past"``; an array, not a constant, so that one compiled
    program serves every λ); else None.
  """

  params: Any
  opt: Any
  seen: jax.Array
  step_rows: jax.Array
  n_seen: jax.Array
  steps: jax.Array
  cur: Optional[Any] = None
  mem: Optional[Any] = None
  init_params: Optional[Any] = None
  old_fraction: Optional[jax.Array] = None


class Setup(NamedTuple):
  """The static settings the step functions read (built once by ``replay_learner``)."""

  name: str
  net: Net
  tx: optax.GradientTransformation
  num_classes: int
  memory: str            # one of MEMORIES
  memory_size: int       # rows of ``mem`` (stream_size for ``all``/``past``)
  max_step_size: int     # rows of ``cur``
  sampling: str          # one of SAMPLINGS
  batch_size: int
  iters_per_batch: int
  iterations: Union[str, int]
  grow_head: bool
  reinit_each_step: bool
  old_fraction: Optional[float]

  @property
  def policy(self):
    """The memory's buffer policy (None for plain fine-tuning)."""
    if self.memory == "none":
      return None
    return buffers.get("append" if self.memory in ("all", "past") else self.memory)

  @property
  def keep_step(self) -> bool:
    """Whether the step's rows are kept in ``cur`` for end-of-step training."""
    return self.memory in ("none", "past") or (self.memory in ("reservoir", "class_balanced")
                                               and self.sampling == "balanced")

  @property
  def replay_online(self) -> bool:
    """Whether each online step adds as many rows replayed from memory (ER)."""
    return self.memory in ("reservoir", "class_balanced")

  @property
  def insert_online(self) -> bool:
    """Whether incoming rows enter the memory as they arrive (Käding's enter at step ends)."""
    return self.memory in ("reservoir", "class_balanced", "all")


# --- pure pieces -----------------------------------------------------------------------------


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


def training_batch(state: State, key: jax.Array, n: int, memory: str, sampling: str) -> tuple:
  """An end-of-step training batch of a replay learner's ``state``: x [n, ...], y [n], w [n].

  ``none``: uniform from the step's data; ``past``: Käding's λ mix of earlier data and the update
  set (``sample_old_new``); ``balanced``: the first n // 2 rows from memory (from the step's
  data while the memory is empty), the rest from the step's data; otherwise uniform from memory.
  ``w`` is 0 on rows drawn from an empty store.
  """
  store = buffers.get("append")
  if memory == "none":
    s = store.sample(state.cur, key, n)
    return s.x, s.y, s.weight
  policy = buffers.get("append" if memory in ("all", "past") else memory)
  if memory == "past":  # mem = earlier steps, cur = this update set
    k_src, k_old, k_new = jax.random.split(key, 3)
    old = policy.sample(state.mem, k_old, n)
    new = store.sample(state.cur, k_new, n)
    from_old = sample_old_new(k_src, state.mem.count, state.cur.count, n, state.old_fraction)
  elif sampling == "balanced" and memory != "all":
    k_mem, k_cur = jax.random.split(key)
    old = policy.sample(state.mem, k_mem, n)
    new = store.sample(state.cur, k_cur, n)
    from_old = (jnp.arange(n) < n // 2) & (jnp.sum(old.weight) > 0)
  else:
    s = policy.sample(state.mem, key, n)
    return s.x, s.y, s.weight
  sel = from_old.reshape((n,) + (1,) * (old.x.ndim - 1))
  return (jnp.where(sel, old.x, new.x), jnp.where(from_old, old.y, new.y),
          jnp.where(from_old, old.weight, new.weight))


def step_passes(s: Setup, budgeted: bool, budget: Optional[int], epochs_per_step: float,
                n_data: int) -> int:
  """SGD steps of an end of step: the budget (``iterations="budget"``, when budgeted and given),
  ``epochs_per_step`` epochs over ``n_data`` rows, or the constant ``iterations``."""
  default = contract.default_passes(epochs_per_step, n_data, s.batch_size)
  if s.iterations == "budget":
    return budget if (budgeted and budget is not None) else default
  if s.iterations == "epochs":
    return default
  return int(s.iterations)


# --- step functions (jitted by the factory, with ``Setup`` closed over) ----------------------


def init_state(s: Setup, key: jax.Array, example_batch, init_params: Optional[dict]) -> State:
  """A fresh state for inputs shaped like ``example_batch["x"]`` [B, ...]."""
  x = jnp.asarray(example_batch["x"])
  k_net, k_mem, k_cur = jax.random.split(key, 3)
  params = s.net.init(k_net, x.shape[1:], init_params)
  if s.grow_head and not ("head" in params and {"kernel", "bias"} <= set(params["head"])):
    raise ValueError(f"learner {s.name!r}: grow_head needs a model whose output layer is "
                     f"'head' (kernel, bias); {s.net} has {sorted(params)}")
  example = jax.ShapeDtypeStruct(x.shape[1:], jnp.float32)
  zero = jnp.zeros((), jnp.int32)
  return State(
      params=params, opt=s.tx.init(params), seen=jnp.zeros((s.num_classes,), bool),
      step_rows=zero, n_seen=zero, steps=zero,
      cur=(buffers.get("append").init(k_cur, s.max_step_size, example, s.num_classes)
           if s.keep_step else None),
      mem=(s.policy.init(k_mem, s.memory_size, example, s.num_classes)
           if s.policy is not None else None),
      init_params=params if s.reinit_each_step else None,
      old_fraction=jnp.float32(s.old_fraction) if s.memory == "past" else None)


def sgd_step(s: Setup, params, opt, seen: jax.Array, x: jax.Array, y: jax.Array,
             w: jax.Array) -> tuple:
  """One weighted cross-entropy SGD step on x [n, ...], y [n], w [n]: (params, opt, loss []).

  ``grow_head``: unseen classes are left out of the softmax and their head rows get no update.
  """
  def keep_unseen_rows(upd):
    if not s.grow_head:
      return upd
    head = upd["head"]
    return {**upd, "head": {**head, "kernel": jnp.where(seen[None, :], head["kernel"], 0.0),
                            "bias": jnp.where(seen, head["bias"], 0.0)}}

  def loss(p, logits):
    del p
    if s.grow_head:  # unseen classes are not in the network yet: out of the softmax
      logits = mask_logits(logits, seen)
    return cross_entropy(logits, y, w)

  return classifier_step(s.net, s.tx, params, opt, x, w, loss, edit=keep_unseen_rows)


def online_update(s: Setup, state: State, batch, key: jax.Array) -> tuple:
  """``update``: ``iters_per_batch`` SGD steps on the batch's labelled rows (ER: each with as many
  rows replayed from memory), then the rows enter the step store and/or the memory."""
  _, lab = contract.masks(batch)
  x = jnp.asarray(batch["x"], jnp.float32)
  y = jnp.where(lab, batch["y"], 0).astype(jnp.int32)
  seen = seen_classes(state.seen, y, lab)
  params, opt, losses = state.params, state.opt, []
  rows = 0
  for i in range(s.iters_per_batch):  # static, small
    xb, yb, wb = x, y, lab.astype(jnp.float32)
    if s.replay_online:
      r = s.policy.sample(state.mem, jax.random.fold_in(key, i), x.shape[0])
      xb, yb, wb = (jnp.concatenate([x, r.x.astype(x.dtype)]), jnp.concatenate([y, r.y]),
                    jnp.concatenate([wb, r.weight]))
    xb, yb, wb = sharding.data_rows((xb, yb, wb))
    params, opt, loss = sgd_step(s, params, opt, seen, xb, yb, wb)
    losses.append(loss)
    rows += xb.shape[0]
  state = state._replace(params=params, opt=opt, seen=seen,
                         step_rows=state.step_rows + jnp.sum(lab).astype(jnp.int32))
  if s.keep_step:
    state = state._replace(cur=buffers.get("append").insert(state.cur, x, y, lab))
  if s.insert_online:
    state = state._replace(mem=s.policy.insert(state.mem, x, y, lab))
  loss = jnp.mean(jnp.stack(losses)) if losses else jnp.float32(jnp.nan)
  return state, contract.info(rows / s.batch_size, loss)


def train_step(s: Setup, carry: tuple, data: State, key: jax.Array) -> tuple:
  """The ``Loop`` step of an end of step: one SGD step on a ``training_batch`` of ``data``."""
  params, opt = carry
  x, y, w = sharding.data_rows(training_batch(data, key, s.batch_size, s.memory, s.sampling))
  params, opt, loss = sgd_step(s, params, opt, data.seen, x, y, w)
  return (params, opt), loss[None]


def prepare_step(s: Setup, state: State) -> tuple:
  """Start of an end of step: counts the step's rows into ``n_seen``, restarts from
  ``init_params`` if asked; returns (state, rows the default epochs run over [] int32)."""
  n_seen = state.n_seen + state.step_rows
  state = state._replace(n_seen=n_seen)
  if s.iterations == "epochs":  # epochs over everything seen so far, this step included
    n_data = n_seen
  else:
    n_data = state.mem.count if s.memory == "all" else state.step_rows
  if s.reinit_each_step:
    state = state._replace(params=state.init_params, opt=s.tx.init(state.init_params))
  return state, n_data


def finish_step(s: Setup, state: State) -> State:
  """End of an end of step: Käding's update set becomes earlier data, the step store is cleared."""
  if s.memory == "past":
    cur = state.cur
    state = state._replace(mem=s.policy.insert(state.mem, cur.x, cur.y,
                                               jnp.arange(cur.y.shape[0]) < cur.count))
  if s.keep_step:
    state = state._replace(cur=append_store.clear(state.cur))
  return state._replace(step_rows=jnp.zeros((), jnp.int32), steps=state.steps + 1)


def predict_logits(s: Setup, mask_unseen: bool, state: State, x: jax.Array) -> jax.Array:
  """``predict``: logits [B, K], unseen classes masked when ``mask_unseen``."""
  logits = s.net.apply(state.params, jnp.asarray(x, jnp.float32))
  return mask_logits(logits, state.seen) if mask_unseen else logits


def warn_dropped(s: Setup, state: State) -> None:
  """Warns (on the host) when the step had more rows than the step store holds."""
  if s.keep_step:
    dropped = int(state.cur.seen) - int(state.cur.count)
    if dropped > 0:
      warnings.warn(f"learner {s.name!r}: {dropped} examples of this step did not fit its step "
                    f"store (max_step_size={s.max_step_size}) and were not trained on at the end "
                    "of the step; pass a larger max_step_size", stacklevel=3)


# --- the factory ------------------------------------------------------------------------------


def _check_choice(name, value, valid):
  if value not in valid:
    raise ValueError(f"unknown {name} {value!r}; valid: {list(valid)}")


def _checked_memory_size(name, memory, memory_size, stream_size, old_fraction, iterations,
                         sizes, iters_per_batch, epochs_per_step, pretrained_first_step) -> int:
  """Validates the settings; returns the memory's rows (the stream's for ``all``/``past``)."""
  _check_choice("memory", memory, MEMORIES)
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
  for key, val in {**sizes, "memory_size": memory_size}.items():
    if int(val) < 1:
      raise ValueError(f"{key} must be >= 1, got {val}")
  if int(iters_per_batch) < 0:
    raise ValueError(f"iters_per_batch must be >= 0, got {iters_per_batch}")
  if float(epochs_per_step) < 0:
    raise ValueError(f"epochs_per_step must be >= 0, got {epochs_per_step}")
  if pretrained_first_step and int(iters_per_batch) != 0:
    raise ValueError("pretrained_first_step files the first step without training: it needs "
                     f"iters_per_batch=0, got {iters_per_batch}")
  return int(memory_size)


def replay_learner(name: str, *, num_classes: int, model: str = "mlp",
                   model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
                   momentum: float = 0.9, weight_decay: float = 0.0, accumulate: int = 1,
                   batch_size: int = 32,
                   memory: str = "none", memory_size: int = 500, sampling: str = "uniform",
                   iters_per_batch: int = 1, epochs_per_step: float = 5.0,
                   max_step_size: int = 4096, stream_size: Optional[int] = None,
                   reinit_each_step: bool = False, budgeted: bool = True,
                   mask_unseen: bool = True, chunk: int = 8,
                   init_params: Optional[dict] = None, old_fraction: Optional[float] = None,
                   iterations: Union[str, int] = "budget", grow_head: bool = False,
                   pretrained_first_step: bool = False) -> Learner:
  """Builds a replay-family learner (see the module docstring).

  Args:
    num_classes: K, the size of the output layer (fixed; unseen classes are masked).
    model: a ``cljax.models`` name (``mlp`` works on any input shape; ``cnn`` for images,
      ``resnet18``, ViTs); ``model_kwargs`` go to its constructor.
    optimizer, lr, momentum, weight_decay: see ``cljax.optim.build``.
    accumulate: micro-batches per optimizer step (``cljax.optim.accumulate_gradients``): the
      optimizer moves once every ``accumulate`` SGD steps (online or at step ends) with their
      mean gradient, a batch ``accumulate`` times larger; each micro-batch is still one pass.
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
    pretrained_first_step: ``init_params`` were trained on the first time step's data (a
      base-initialisation set, Käding's scenario 2): the first ``end_of_step`` trains nothing
      (0 passes) and only files the step: its classes are seen, its rows count as data seen
      (``iterations="epochs"``) and, with ``old_fraction``, become earlier data. Needs
      ``iters_per_batch=0``.
  """
  memory_size = _checked_memory_size(
      name, memory, memory_size, stream_size, old_fraction, iterations,
      dict(batch_size=batch_size, max_step_size=max_step_size, chunk=chunk), iters_per_batch,
      epochs_per_step, pretrained_first_step)
  _check_choice("sampling", sampling, SAMPLINGS)
  s = Setup(name=name, net=Net.named(model, num_classes, **(model_kwargs or {})),
            tx=optim.build(optimizer, lr, momentum=momentum, weight_decay=weight_decay,
                           accumulate=accumulate),
            num_classes=num_classes, memory=memory, memory_size=memory_size,
            max_step_size=int(max_step_size), sampling=sampling, batch_size=int(batch_size),
            iters_per_batch=int(iters_per_batch), iterations=iterations, grow_head=grow_head,
            reinit_each_step=reinit_each_step, old_fraction=old_fraction)
  loop = Loop(lambda carry, data, key, i, stop: train_step(s, carry, data, key), chunk=chunk,
              unroll=True, accumulate=accumulate)
  prepare = jax.jit(lambda state: prepare_step(s, state))
  finish = jax.jit(lambda state: finish_step(s, state))

  predict = jax.jit(lambda state, x: predict_logits(s, mask_unseen, state, x))

  def end_of_step(state, key, budget=None, progress=None, early_stop=None):
    """Spends ``budget`` passes (None: the default epochs), then ends the step; with
    ``early_stop``, fewer when the held-out score stops improving (the best model kept)."""
    warn_dropped(s, state)
    state, n_data = prepare(state)
    passes = step_passes(s, budgeted, budget, epochs_per_step, int(n_data))
    if pretrained_first_step and int(state.steps) == 0:
      passes = 0  # init_params already learnt this step's data
    (params, opt), sums, stopped = loop.stopping(
        (state.params, state.opt), state, key, int(passes), early_stop,
        lambda carry, x: predict(state._replace(params=carry[0]), x), progress=progress)
    state = finish(state._replace(params=params, opt=opt))
    spent = passes if stopped is None else stopped.passes
    loss = sums[0] / spent if sums is not None else jnp.float32(jnp.nan)
    return state, contract.info(spent, loss, **early_stop_lib.extra(stopped, passes))

  return Learner(name=name, init=lambda key, batch: init_state(s, key, batch, init_params),
                 update=jax.jit(lambda state, batch, key: online_update(s, state, batch, key)),
                 end_of_step=end_of_step, predict=predict,
                 budgeted=budgeted and iterations == "budget", early_stopping=True)


# --- registered wrappers ----------------------------------------------------------------------

_NET_INPUTS = ("model", "model_kwargs", "batch_size", "init_params")


@register("finetune", inputs=_NET_INPUTS + ("max_step_size", "stream_size"))
def finetune(*, num_classes: int, model: str = "mlp",
             model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
             momentum: float = 0.9, weight_decay: float = 0.0, accumulate: int = 1,
             batch_size: int = 32, iters_per_batch: int = 1, epochs_per_step: float = 5.0,
             max_step_size: int = 4096,
             stream_size: Optional[int] = None, mask_unseen: bool = True, chunk: int = 8,
             init_params: Optional[dict] = None, old_fraction: Optional[float] = None,
             iterations: Union[str, int] = "budget", grow_head: bool = False,
             pretrained_first_step: bool = False) -> Learner:
  """Fine-tuning, warm-started from the previous step, learning from each batch as it arrives.

  Without ``old_fraction``: naive fine-tuning on the stream only (forgets). With
  ``old_fraction=λ``: Käding et al.'s incremental fine-tuning, keeping all earlier data and mixing
  it into every update with probability λ (needs ``stream_size``). Arguments: ``replay_learner``.
  """
  return replay_learner("finetune", memory="none" if old_fraction is None else "past",
                        **locals())


# Käding et al. 2016, Sec. 4: SGD lr 1e-3, momentum 0.9, L2 weight decay 5e-4, mini-batches of 64;
# one epoch over all data seen so far per update; λ = 0.75 (as good as λ = 1 while the new data is
# trained on at once). Updates happen at step ends (iters_per_batch = 0).
@register("finetune_kading", inputs=_NET_INPUTS + ("max_step_size", "stream_size"))
def finetune_kading(*, num_classes: int, stream_size: Optional[int] = None,
                    model: str = "mlp", model_kwargs: Optional[dict] = None,
                    optimizer: str = "sgd", lr: float = 1e-3, momentum: float = 0.9,
                    weight_decay: float = 5e-4, accumulate: int = 1, batch_size: int = 64,
                    iters_per_batch: int = 0,
                    epochs_per_step: float = 1.0, max_step_size: int = 4096,
                    mask_unseen: bool = True, chunk: int = 8,
                    init_params: Optional[dict] = None, old_fraction: float = 0.75,
                    iterations: Union[str, int] = "epochs", grow_head: bool = True,
                    pretrained_first_step: bool = False) -> Learner:
  """``finetune`` with Käding et al.'s settings as defaults (the comment above).

  Meant to start from a base-initialised network (``init_params``; experiments pass it when
  ``config.base_init.classes`` > 0); with ``pretrained_first_step=True`` the first step (the base
  set) becomes earlier data without being trained on again.
  """
  return finetune(**locals())


@register("er", inputs=_NET_INPUTS + ("max_step_size",))
def er(*, num_classes: int, buffer: str = "reservoir", memory_size: int = 500,
       sampling: str = "uniform", model: str = "mlp",
       model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
       momentum: float = 0.9, weight_decay: float = 0.0, accumulate: int = 1,
       batch_size: int = 32, iters_per_batch: int = 1, epochs_per_step: float = 5.0,
       max_step_size: int = 4096, mask_unseen: bool = True, chunk: int = 8,
       init_params: Optional[dict] = None) -> Learner:
  """Online experience replay with a ``reservoir`` or ``class_balanced`` memory of
  ``memory_size`` examples, budgeted at step ends. Arguments: ``replay_learner``."""
  if buffer not in ("reservoir", "class_balanced"):
    raise ValueError(f"unknown ER buffer {buffer!r}; valid: ['class_balanced', 'reservoir']")
  args = locals()
  return replay_learner("er", memory=args.pop("buffer"), **args)


@register("offline", inputs=_NET_INPUTS + ("stream_size",))
def offline(*, num_classes: int, stream_size: Optional[int] = None,
            epochs_per_step: float = 5.0, model: str = "mlp",
            model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
            momentum: float = 0.9, weight_decay: float = 0.0, accumulate: int = 1,
            batch_size: int = 32, mask_unseen: bool = True, chunk: int = 8,
            init_params: Optional[dict] = None) -> Learner:
  """Offline upper bound: after each step, retrain from the initialization (``init_params`` when
  given) on all data seen, ``epochs_per_step`` epochs, whatever the budget. Needs
  ``stream_size``. Arguments: ``replay_learner``."""
  return replay_learner("offline", memory="all", iters_per_batch=0, reinit_each_step=True,
                        budgeted=False, **locals())
