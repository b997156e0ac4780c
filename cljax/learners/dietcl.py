"""DietCL (Zhang et al., ICLR 2024, "Continual Learning on a Diet"): semi-supervised continual
learning under a per-step compute budget, with a ViT encoder + MAE decoder. Reference code:
wx-zhang/continual-learning-on-a-diet (cited below by file and line).

Losses at time step t (``cljax/models/vit.py`` holds the model):

* L_r: MAE reconstruction (mask ratio 0.75, normalised-pixel targets, MSE over masked patches) on
  the step's *unlabeled* rows (``labeled`` False), weighted ``w_r`` (``unlabeled_coef`` 50,
  ``config/trainer/diet.yaml`` line 16; ``trainer/pretrain.py`` lines 86-95);
* L_m: cross-entropy on the step's *labeled* rows. ``lm_mask="logits"`` (class-incremental,
  ``trainer/base.py`` lines 148-150): the softmax runs over the classes of this step's labels
  only. ``lm_mask="targets"`` (time-ordered streams, lines 152-159): the softmax keeps all seen
  classes and only the target columns of the classes in the labelled batch count;
* L_b: cross-entropy over all seen classes on a task-balanced memory of the labelled data so far
  (``cljax.ops.buffers`` policy ``task_balanced``; the step's labels enter it before training,
  ``replay_before: True``, ``data.py`` lines 24-44). ``memory_size=-1`` keeps every labelled row
  (``replay_buffer_size: -1``, ``config/base.yaml`` line 60) in a memory of ``stream_size`` rows;
  every task is truncated to min(its labels, the previous tasks' share), ``data.py`` lines 56-93.

Regularisation (``config/base.yaml`` lines 41-48; ``trainer/base.py`` lines 58-71, 128-163):
every labelled CE batch (current and buffer, in both phases) goes through timm Mixup/CutMix
(mixup α 0.8, cutmix α 1.0, switch 0.5, label smoothing 0.1 over the classes seen;
``cljax.ops.mixup``) and a soft-target CE; labelled images get RandomResizedCrop (scale 0.08-1) +
horizontal flip (``dataset/utils.py`` line 16), MAE inputs RandomResizedCrop (scale 0.2-1) + flip
(``dataset/imagenet.py`` lines 36-43) (``cljax.ops.feature_aug.augment_images``).

Joint loss ``w_r·L_r + L_m + L_b``, one joint batch of ``batch_size`` examples = one pass.
Budget allocation (``allocation``):

* ``paper``: the first min(budget, B̄) passes are joint, each batch split equally among the three
  sources; the passes above B̄ (``threshold``) are buffer-only fine-tuning with L_b;
* ``reference_code``: 80 % of the passes joint (100 % at the first step), 20 % buffer-only at
  lr × ``buffer_lr_scale`` (``trainer/diet.py`` lines 10-19, ``config/trainer/diet.yaml`` lines
  13-15); joint batches are ``int(0.4 B)`` unlabeled rows, the rest split evenly between current
  labels and buffer (102 / 77 / 77 of 256; ``trainer/diet.py`` lines 28-53).

In both, the first time step has no buffer yet: its joint batches give the buffer's share to the
current labels (the reference's 102 / 154 / 0 at task 0), so the step's labels are not counted
twice. Units: the paper's budgets and B̄ count optimizer steps of 1,024 examples (gradients
accumulated over 4 batches of 256, ``trainer/base.py`` lines 171-175, ``trainer/utils.py`` line
14); here a pass is one optimizer step of ``batch_size`` rows, so B̄ steps ≈ B̄ · 1024 /
``batch_size`` passes.

Optimizer (reference code): AdamW, betas (0.9, 0.95), weight decay 0.05 on matrices only
(``cljax.optim.matrices``), layer-wise lr decay 0.65 (``cljax.optim.layer_scales`` with
``vit.layer_id``), re-created at every stage (each phase of each step), so the optimizer state
never outlives ``end_of_step`` and is not part of the learner state. The lr of each phase is the
reference's half cosine from the phase's peak down to a floor (``trainer/lr_sched.py`` lines
10-23: ``min_lr + (peak - min_lr)·½(1 + cos(π i / n))``, and a peak below ``min_lr`` floors at
half the peak, which is what the buffer-only phase at ×0.1 gets; ``min_lr`` 5e-5 at 1,024
examples, ``config/base.yaml`` line 56).

``er_diet`` (registered here) is the reference's ER, its ``BaseTrainer``: this learner without
L_r, with plain CE over the seen classes, half current labels and half a buffer of the earlier
steps only (``replay_before=False``), every pass joint (the factory's docstring cites the lines).

Training runs through ``cljax.train.loop.Loop`` as a ``lax.scan`` (the ViT has no convolution;
patch embedding is a matmul, so the XLA:CPU conv-in-loop slowdown does not apply).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from cljax import learner as contract
from cljax import optim
from cljax.learner import Learner
from cljax.learners import _phases, _stores, _vit
from cljax.learners.registry import register
from cljax.models.pure import Net
from cljax.ops import buffers
from cljax.ops.allocation import source_split
from cljax.ops import mixup as mixup_lib
from cljax.ops.buffers import append as append_store
from cljax.ops.losses import mask_logits, seen_classes
from cljax.train import early_stop as early_stop_lib
from cljax.train.loop import Loop

ALLOCATIONS = ("paper", "reference_code")
LM_MASKS = ("logits", "targets", "none")


class State(NamedTuple):
  """DietCL's state.

  params: the ViT + MAE decoder parameters (``cljax.models`` ``vit_*``).
  seen: [K] bool, classes with a labelled row so far (the head's mask, L_b's softmax).
  step_cls: [K] bool, classes labelled in this step (L_m's softmax with ``lm_mask="logits"``).
  cur_l, cur_u: ``append`` stores of this step's labelled / unlabelled rows (x [S, ...], y [S];
    S = ``max_step_size``), emptied at the step's end.
  mem: ``task_balanced`` memory of labelled rows (capacity ``memory_capacity``), one task a step.
  step: [] int32, time steps ended so far.
  """

  params: Any
  seen: jax.Array
  step_cls: jax.Array
  cur_l: Any
  cur_u: Any
  mem: Any
  step: jax.Array


def phase_passes(budget: int, step: int, allocation: str, threshold: int,
                 joint_fraction: float = 0.8) -> tuple[int, int]:
  """(joint passes, buffer-only passes) of a step's budget; they always sum to ``budget``."""
  if allocation == "paper":
    joint = min(budget, threshold)
  else:
    joint = budget if step == 0 else int(round(joint_fraction * budget))
  return joint, budget - joint


def memory_capacity(memory_size: int, stream_size: Optional[int], max_step_size: int) -> int:
  """Rows of the task-balanced memory: ``memory_size``, or for ``memory_size <= 0`` (the
  reference's -1, keep every labelled row) the whole stream (``stream_size``; ``max_step_size``
  when it is not given)."""
  return int(memory_size) if int(memory_size) > 0 else int(stream_size or max_step_size)


def current_label_loss(lm_mask: str, logits, mixed: mixup_lib.Mixed, yl, in_batch_rows,
                       state: State) -> jax.Array:
  """L_m on the current labelled rows: logits [n, K] against ``mixed``'s soft targets, the
  softmax over this step's classes (``logits``), over every seen class with only the targets of
  the classes in the batch (rows ``in_batch_rows`` [n] bool of labels yl [n]; ``targets``), or
  over every seen class (``none``)."""
  if lm_mask == "logits":  # softmax over this step's classes (class-incremental)
    return mixup_lib.soft_cross_entropy(logits, mixed.targets, mixed.weight, state.step_cls)
  if lm_mask == "none":  # ablation: like L_b, every seen class
    return mixup_lib.soft_cross_entropy(logits, mixed.targets, mixed.weight, state.seen)
  # Time-ordered: softmax over every seen class, targets of the batch's classes only.
  in_batch = seen_classes(jnp.zeros_like(state.seen), yl, in_batch_rows)
  return mixup_lib.soft_cross_entropy(logits, mixed.targets, mixed.weight, state.seen, in_batch)


@jax.jit
def update(state: State, batch: dict, key: jax.Array) -> tuple:
  """Stores the batch's labeled and unlabeled rows for this step; no training (0 passes)."""
  del key
  seen, cur_l, cur_u = _stores.store_split(state.seen, state.cur_l, state.cur_u, batch)
  return state._replace(seen=seen, step_cls=_stores.labelled_classes(state.step_cls, batch),
                        cur_l=cur_l, cur_u=cur_u), contract.info()


def balance_memory(state: State, max_tasks: int, balanced: bool) -> State:
  """The step's labelled rows enter the task-balanced memory (one task) before training; when
  ``balanced``, every task is cut to min(this step's labels, the earlier tasks' share)
  (``data.py`` 56-93)."""
  cur, mem = state.cur_l, state.mem
  valid = jnp.arange(cur.y.shape[0]) < cur.count
  earlier = jnp.arange(mem.task_count.shape[0]) < jnp.minimum(mem.tasks, max_tasks)
  prev = jnp.min(jnp.where(earlier, mem.task_count, jnp.iinfo(jnp.int32).max))
  level = jnp.where(cur.count > 0, jnp.minimum(cur.count, prev), prev)
  return state._replace(mem=buffers.get("task_balanced").insert(
      mem, cur.x, cur.y, valid, level if balanced else None))


@jax.jit
def finish(state: State) -> State:
  """The step's stores emptied, its classes forgotten, the step counted."""
  return state._replace(cur_l=append_store.clear(state.cur_l),
                        cur_u=append_store.clear(state.cur_u),
                        step_cls=jnp.zeros_like(state.step_cls), step=state.step + 1)


def joint_loss(net: Net, recipe: _phases.Recipe, split: tuple, lm_mask: str, w_r: float,
               mask_ratio: float, norm_pix: bool, replay_before: bool = True):
  """``loss(params, state, key) -> (w_r·L_r + L_m + L_b, (L_r, L_m, L_b))`` on one joint batch
  of ``split`` = (unlabeled, current labeled, buffer) rows (``source_split``). ``replay_before``:
  the memory already holds this step's labels (DietCL), else only earlier steps' (the
  reference's ER), so "no earlier task" is 1 task in memory or 0."""
  nu, nl, nb = split
  store, memory = buffers.get("append"), buffers.get("task_balanced")

  def loss(params, state: State, key):
    ku, kl, kb, km, kau, kml, kmb = jax.random.split(key, 7)
    # No earlier task in memory (the first step): the buffer's rows go to the current labels.
    first = state.mem.tasks <= (1 if replay_before else 0)
    xl, yl, wl = _stores.sample_rows(store, state.cur_l, kl, nl + nb)
    xb, yb, wb = _stores.sample_rows(memory, state.mem, kb, nb)
    l_r = jnp.zeros(())
    if nu:
      xu, _, wu = _stores.sample_rows(store, state.cur_u, ku, nu)
      l_r = net.call(params, recipe.images(kau, xu, mae=True), "mae_loss", km, mask_ratio,
                     norm_pix, wu)
    rows = jnp.where(first, nl + nb, nl)
    cur = recipe.batch(kml, xl, yl, wl, state.seen, rows)
    buf = recipe.batch(kmb, xb, yb, wb, state.seen)
    x_ce = jnp.concatenate([cur.x[:nl], jnp.where(first, cur.x[nl:], buf.x)])
    logits = net.apply(params, x_ce)  # one forward for both CE terms
    l_m = current_label_loss(lm_mask, logits, cur, yl,
                             (wl > 0) & (jnp.arange(nl + nb) < rows), state)
    l_b = mixup_lib.soft_cross_entropy(logits[nl:], buf.targets,
                                       jnp.where(first, 0.0, buf.weight), state.seen)
    return w_r * l_r + l_m + l_b, (l_r, l_m, l_b)

  return loss


def buffer_loss(net: Net, recipe: _phases.Recipe, batch_size: int):
  """``loss(params, state, key) -> (L_b, (0, 0, L_b))`` on ``batch_size`` memory rows."""
  memory = buffers.get("task_balanced")

  def loss(params, state: State, key):
    k_s, k_m = jax.random.split(key)
    xb, yb, wb = _stores.sample_rows(memory, state.mem, k_s, batch_size)
    buf = recipe.batch(k_m, xb, yb, wb, state.seen)
    l_b = mixup_lib.soft_cross_entropy(net.apply(params, buf.x), buf.targets, buf.weight,
                                       state.seen)
    return l_b, (jnp.zeros(()), jnp.zeros(()), l_b)

  return loss


@register("dietcl", inputs=("model", "model_kwargs", "batch_size", "init_params",
                            "max_step_size", "stream_size"))
def dietcl(*, num_classes: int, model: str = "vit_tiny", model_kwargs: Optional[dict] = None,
           batch_size: int = 64, accumulate: int = 1, optimizer: str = "adamw",
           lr: float = 1e-4, min_lr: float = _phases.MIN_LR, buffer_lr_scale: float = 0.1,
           weight_decay: float = 0.05,
           betas: Sequence[float] = (0.9, 0.95), layer_decay: float = 0.65, w_r: float = 50.0,
           mask_ratio: float = 0.75, norm_pix: bool = True, allocation: str = "paper",
           threshold: int = 400, joint_fraction: float = 0.8, lm_mask: str = "logits",
           mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, mixup_prob: float = 1.0,
           switch_prob: float = 0.5, label_smoothing: float = 0.1, augment: bool = True,
           crop_scale: Sequence[float] = (0.08, 1.0),
           mae_crop_scale: Sequence[float] = (0.2, 1.0), flip: bool = True,
           reconstruction: bool = True, balanced_buffer: bool = True,
           memory_size: int = -1, stream_size: Optional[int] = None,
           max_step_size: int = 4096, max_tasks: int = 256, epochs_per_step: float = 1.0,
           chunk: int = 8, init_params: Optional[dict] = None,
           replay_before: bool = True) -> Learner:
  """Builds DietCL (see the module docstring).

  Args:
    num_classes: K, the head's fixed maximum number of classes (the seen mask grows it).
    model, model_kwargs: a ViT of ``cljax.models`` (``vit_micro`` ... ``vit_base``) and its
      options (``patch``, config fields such as ``depth``, ``dtype``).
    batch_size: examples per pass (joint batches and buffer-only batches alike).
    accumulate: micro-batches per AdamW step (``cljax.optim.accumulate_gradients``): the
      reference's 1,024-example steps are ``batch_size=32, accumulate=32``; every micro-batch
      is one pass, and the lr schedule counts passes.
    lr: peak learning rate per 256 examples (scaled linearly to the effective batch,
      ``batch_size`` x ``accumulate``, as in the code).
    min_lr: the floor of each phase's half cosine, per 256 examples like ``lr`` (the
      reference's 5e-5 at 1,024 examples); a phase whose peak is below it floors at half its peak.
    buffer_lr_scale: lr factor of the buffer-only phase (reference code 0.1).
    optimizer, weight_decay, betas, layer_decay: the direction (``cljax.optim.direction``; the
      reference's AdamW, decay on weight matrices) and layer-wise lr decay (0.05, (0.9, 0.95),
      0.65).
    w_r: weight of the reconstruction loss (reference code 50).
    mask_ratio, norm_pix: MAE masking ratio and per-patch normalised targets.
    allocation: ``paper`` or ``reference_code`` (module docstring); ``threshold`` is the paper's
      B̄ in passes; ``joint_fraction`` the reference code's 0.8.
    lm_mask: ``logits`` (class-incremental streams), ``targets`` (time-ordered streams) or
      ``none`` (plain CE over every seen class: the paper's ablation without masked CE).
    reconstruction: False drops L_r and gives its rows to the labels (ablation).
    balanced_buffer: False keeps every labelled row without the per-task truncation, so L_b
      samples uniformly over all labels (ablation of the balanced buffer).
    mixup_alpha, cutmix_alpha, mixup_prob, switch_prob, label_smoothing: timm Mixup on every
      labelled batch (0.8, 1.0, 1.0, 0.5, 0.1; both alphas 0 turns it off).
    augment, crop_scale, mae_crop_scale, flip: RandomResizedCrop (+ horizontal flip) of labelled
      images and of MAE inputs (scales (0.08, 1) and (0.2, 1)).
    memory_size: capacity of the task-balanced memory of labelled examples; -1 (reference):
      every labelled row, in a memory of ``stream_size`` rows (``max_step_size`` rows when
      ``stream_size`` is not given, so the task balance truncates past that).
    stream_size: examples in the whole stream (experiments pass it).
    max_step_size: capacity of each step store (labeled, unlabeled).
    max_tasks: time steps the memory tells apart; later steps share the last task id.
    epochs_per_step: passes (epochs over the step's rows) when ``end_of_step`` gets no budget.
    chunk: optimizer steps per jitted call (a ``lax.scan``).
    init_params: start from these parameters (e.g. an MAE-pretrained ViT of the same model).
    replay_before: the step's labels enter the memory before training (DietCL,
      ``config/trainer/diet.yaml`` line 3), or after it (``False``: the reference's ER,
      ``config/trainer/base.yaml`` line 3, ``data.py`` lines 34-43), so the buffer half of every
      batch holds earlier steps only.
  """
  if allocation not in ALLOCATIONS:
    raise ValueError(f"unknown allocation {allocation!r}; valid: {list(ALLOCATIONS)}")
  if lm_mask not in LM_MASKS:
    raise ValueError(f"unknown lm_mask {lm_mask!r}; valid: {list(LM_MASKS)}")
  if batch_size < 3:
    raise ValueError(f"batch_size must be >= 3 (three sources per joint batch), got {batch_size}")
  capacity = memory_capacity(memory_size, stream_size, max_step_size)
  for k, v in (("max_step_size", max_step_size), ("memory capacity", capacity),
               ("chunk", chunk), ("max_tasks", max_tasks)):
    if int(v) < 1:
      raise ValueError(f"{k} must be >= 1, got {v}")
  net = _vit.vit_net("dietcl", model, num_classes, model_kwargs)
  split = source_split(batch_size, allocation, reconstruction)
  # The reference scales by the effective batch (MAE's eff_batch_size = batch x accum_iter).
  peak_lr = lr * batch_size * accumulate / 256
  floor_lr = min_lr * batch_size * accumulate / 256
  recipe = _phases.Recipe(float(mixup_alpha), float(cutmix_alpha), float(mixup_prob),
                          float(switch_prob), float(label_smoothing), bool(augment),
                          tuple(crop_scale), tuple(mae_crop_scale), bool(flip))
  tx = optim.direction(optimizer, weight_decay=weight_decay, betas=betas,
                       decay_mask=optim.matrices, accumulate=accumulate)
  store = buffers.get("append")
  memory = buffers.get("task_balanced")

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    k_net, k_l, k_u, k_m = jax.random.split(key, 4)
    ex = jax.ShapeDtypeStruct(x.shape[1:], jnp.float32)
    return State(params=net.init(k_net, x.shape[1:], init_params),
                 seen=jnp.zeros((num_classes,), bool),
                 step_cls=jnp.zeros((num_classes,), bool),
                 cur_l=store.init(k_l, max_step_size, ex, num_classes),
                 cur_u=store.init(k_u, max_step_size, ex, num_classes),
                 mem=memory.init(k_m, capacity, ex, num_classes, max_tasks=max_tasks),
                 step=jnp.zeros((), jnp.int32))

  # (experiments/bench/scaling.py finds these two loops by name in end_of_step's closure.)
  joint_loop = Loop(_phases.phase_step(
      joint_loss(net, recipe, split, lm_mask, w_r, mask_ratio, norm_pix, replay_before), tx,
      accumulate), chunk=chunk, unroll=False, accumulate=accumulate)
  buffer_loop = Loop(_phases.phase_step(buffer_loss(net, recipe, batch_size), tx, accumulate),
                     chunk=chunk, unroll=False, accumulate=accumulate)
  prepare = jax.jit(lambda s: balance_memory(s, max_tasks, balanced_buffer))
  scales_of = jax.jit(lambda p: _vit.vit_layer_scales(p, layer_decay))
  opt_init = jax.jit(tx.init)

  @jax.jit
  def predict(state: State, x):
    return mask_logits(net.apply(state.params, jnp.asarray(x, jnp.float32)), state.seen)

  def end_of_step(state: State, key, budget=None, progress=None, early_stop=None):
    """Spends exactly ``budget`` passes (None: the default epochs): joint, then buffer-only.
    With ``early_stop`` each phase may stop early, keeping its best parameters."""
    k_joint, k_buf = jax.random.split(key)
    if budget is None:
      rows = int(state.cur_l.count) + int(state.cur_u.count)
      budget = contract.default_passes(epochs_per_step, rows, batch_size)
    joint, buf = phase_passes(budget, int(state.step), allocation, threshold, joint_fraction)
    if replay_before:
      state = prepare(state)
    params, scales = state.params, scales_of(state.params)
    logits_of = lambda p, x: predict(state._replace(params=p), x)  # noqa: E731
    params, s_joint, stop_j = _phases.run_phase(joint_loop, opt_init, params, state, k_joint,
                                                joint, peak_lr, scales, floor_lr, progress,
                                                early_stop, logits_of)
    params, s_buf, stop_b = _phases.run_phase(buffer_loop, opt_init, params, state, k_buf, buf,
                                              peak_lr * buffer_lr_scale, scales, floor_lr,
                                              progress, early_stop, logits_of)
    state = state._replace(params=params)
    planned = (joint, buf)
    if early_stop is not None:
      joint, buf = stop_j.passes, stop_b.passes
    if not replay_before:  # the reference's ER: the step's labels enter the memory after training
      state = prepare(state)
    state = finish(state)
    zero = jnp.zeros((4,))
    s_joint = zero if s_joint is None else s_joint
    s_buf = zero if s_buf is None else s_buf
    stopped = {}
    if early_stop is not None:
      # The kept model: the buffer phase's best, or (scored at its start) the joint phase's.
      best = stop_j.best_pass if stop_b.best_pass == 0 else joint + stop_b.best_pass
      stopped = {**early_stop_lib.extra(stop_b._replace(passes=joint + buf, best_pass=best),
                                        sum(planned)),
                 "best_pass_joint": jnp.float32(stop_j.best_pass),
                 "best_pass_buffer": jnp.float32(stop_b.best_pass)}
    spent = joint + buf
    return state, contract.info(
        spent, (s_joint[0] + s_buf[0]) / max(spent, 1), joint_passes=jnp.float32(joint),
        buffer_passes=jnp.float32(buf), loss_r=s_joint[1] / max(joint, 1),
        loss_m=s_joint[2] / max(joint, 1), loss_b=s_joint[3] / max(joint, 1),
        loss_buffer=s_buf[3] / max(buf, 1), **stopped)

  return Learner(name="dietcl", init=init, update=update, end_of_step=end_of_step,
                 predict=predict, early_stopping=True)


@register("er_diet", inputs=("model", "model_kwargs", "batch_size", "init_params",
                             "max_step_size", "stream_size"))
def er_diet(*, num_classes: int, model: str = "vit_tiny", model_kwargs: Optional[dict] = None,
            batch_size: int = 64, accumulate: int = 1, optimizer: str = "adamw",
            lr: float = 1e-4, min_lr: float = _phases.MIN_LR, weight_decay: float = 0.05,
            betas: Sequence[float] = (0.9, 0.95),
            layer_decay: float = 0.65, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
            mixup_prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1,
            augment: bool = True, crop_scale: Sequence[float] = (0.08, 1.0), flip: bool = True,
            balanced_buffer: bool = True, memory_size: int = -1,
            stream_size: Optional[int] = None, max_step_size: int = 4096, max_tasks: int = 256,
            epochs_per_step: float = 1.0, chunk: int = 8,
            init_params: Optional[dict] = None) -> Learner:
  """ER as DietCL's reference code runs it (its ``BaseTrainer``, ``trainer=base``): the same
  ViT, start (``init_params``), optimizer, per-step half-cosine lr, layer decay, Mixup/CutMix,
  label smoothing and crops as DietCL (arguments as ``dietcl``'s), and:

  * each batch is half the step's labelled rows and half the task-balanced buffer
    (``sampling: batchmix``, ``config/base.yaml`` line 59; ``trainer/base.py`` lines 95-101:
    ``[batch_size // 2, batch_size // 2]``, all current labels at the first step);
  * the buffer holds earlier steps only: the step's labels enter it after training
    (``replay_before: False``, ``config/trainer/base.yaml`` line 3; ``data.py`` lines 34-43);
  * plain CE over every seen class on both halves (``mask_logits: False``,
    ``config/trainer/base.yaml`` line 2; ``trainer/base.py`` lines 160-169; the head grows to the
    classes seen, ``main.py`` lines 138-144), no reconstruction loss, one phase of the whole
    budget (``trainer/base.py`` lines 177-197).

  It is ``dietcl(reconstruction=False, lm_mask="none", replay_before=False)`` with every pass
  joint: DietCL's trainer subclasses this one in the reference (``trainer/diet.py`` line 8).
  """
  args = dict(locals())
  return dietcl(**args, reconstruction=False, lm_mask="none", replay_before=False,
                allocation="paper", threshold=2**31 - 1)
