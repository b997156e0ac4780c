"""DietCL (Zhang et al., ICLR 2024, "Continual Learning on a Diet"): semi-supervised continual
learning under a per-step compute budget, with a ViT encoder + MAE decoder
(wx-zhang/continual-learning-on-a-diet).

Losses at time step t (``cljax/models/vit.py`` holds the model):

* L_r: MAE reconstruction (mask ratio 0.75, normalised-pixel targets, MSE over masked patches) on
  the step's *unlabeled* rows (``labeled`` False);
* L_m: cross-entropy on the step's *labeled* rows, with the logits of classes absent from this
  step's labels masked out (in a class-incremental stream: the classes not introduced at t);
* L_b: cross-entropy over all seen classes on a task-balanced memory of the labelled data so far
  (``cljax.ops.buffers`` policy ``task_balanced``; the step's labels enter it before training, so
  L_b covers all labelled data so far).

Joint loss ``w_r·L_r + L_m + L_b``, one joint batch of ``batch_size`` examples = one pass.
Budget allocation (``allocation``):

* ``paper``: the first min(budget, B̄) passes are joint, each batch split equally among the three
  sources; the passes above B̄ (``threshold``) are buffer-only fine-tuning with L_b;
* ``reference_code``: 80 % of the passes joint (100 % at the first step), 20 % buffer-only at
  lr × ``buffer_lr_scale``; joint batches mix unlabeled / labeled / buffer as 102 / 77 / 77 of 256,
  scaled to ``batch_size``.

Optimizer (reference code): AdamW, betas (0.9, 0.95), weight decay 0.05 on matrices only
(``cljax.optim.matrices``), a half-cosine decay over each phase, layer-wise lr decay 0.65
(``cljax.optim.layer_scales`` with ``vit.layer_id``), re-created at every stage (each phase of each
step), so the optimizer state never outlives ``end_of_step`` and is not part of the learner state.

Training runs through ``cljax.train.loop.Loop`` as a ``lax.scan`` (the ViT has no convolution;
patch embedding is a matmul, so the XLA:CPU conv-in-loop slowdown does not apply).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from cljax import learner as contract
from cljax import optim
from cljax.learner import Learner
from cljax.learners.registry import register
from cljax.ops.losses import mask_logits, seen_classes
from cljax.ops.losses import masked_cross_entropy as masked_ce
from cljax.models import vit as vit_lib
from cljax.models.pure import Net
from cljax.ops import buffers
from cljax.ops import sharding
from cljax.ops.buffers import append as append_store
from cljax.train.loop import Loop, apply_updates

ALLOCATIONS = ("paper", "reference_code")
VIT_MODELS = tuple(f"vit_{c}" for c in vit_lib.CONFIGS)


def source_split(batch_size: int, allocation: str) -> tuple[int, int, int]:
  """Rows of a joint batch from (unlabeled, current labeled, buffer)."""
  if allocation == "paper":
    nu = nl = batch_size // 3
  else:  # reference code: 102 / 77 / 77 of 256
    nu, nl = round(batch_size * 102 / 256), round(batch_size * 77 / 256)
  return nu, nl, batch_size - nu - nl


def phase_passes(budget: int, step: int, allocation: str, threshold: int,
                 joint_fraction: float = 0.8) -> tuple[int, int]:
  """(joint passes, buffer-only passes) of a step's budget; they always sum to ``budget``."""
  if allocation == "paper":
    joint = min(budget, threshold)
  else:
    joint = budget if step == 0 else int(round(joint_fraction * budget))
  return joint, budget - joint


def vit_net(learner: str, model: str, num_classes: int, model_kwargs: Optional[dict]) -> Net:
  """The learner's ViT (+ MAE decoder): ``Net.named(model, ...)``, so params from
  ``Net.named(model, ...)`` elsewhere (e.g. ``cljax.train.base_init.train_mae``) fit as
  ``init_params``."""
  if model not in VIT_MODELS:
    raise ValueError(f"learner {learner!r} needs a ViT with an MAE decoder; model {model!r} is "
                     f"not one (valid: {list(VIT_MODELS)})")
  return Net.named(model, num_classes, **(model_kwargs or {}))


def vit_layer_scales(params: dict, decay: float) -> dict:
  """Layer-wise lr factors decay^(depth + 1 - layer) of a ViT's params (``vit.layer_id``)."""
  depth = len(params["blocks"])
  return optim.layer_scales(params, lambda names: vit_lib.layer_id(names, depth), depth, decay)


def store_rows(state: dict, batch: dict, lab_key: str, unl_key: str) -> dict:
  """``state`` with the batch's labelled rows added to store ``lab_key``, its unlabeled rows to
  ``unl_key`` (label 0) and the labelled classes to ``seen`` (and to ``step_cls`` when present).
  Batch: x [B, ...], y [B], optional valid / labeled [B]."""
  valid, lab = contract.masks(batch)
  unl = valid & ~lab
  x = jnp.asarray(batch["x"], jnp.float32)
  y = jnp.where(lab, batch["y"], 0).astype(jnp.int32)
  store = buffers.get("append")
  out = {**state, "seen": seen_classes(state["seen"], y, lab),
         lab_key: store.insert(state[lab_key], x, y, lab),
         unl_key: store.insert(state[unl_key], x, jnp.zeros_like(y), unl)}
  if "step_cls" in state:
    out["step_cls"] = seen_classes(state["step_cls"], y, lab)
  return out


def sample_rows(policy, store, key: jax.Array, n: int):
  """n rows drawn uniformly with replacement: x [n, ...], y [n], weight [n] (all 0 when empty,
  so an empty source adds nothing to a loss), split over the devices of the run's mesh."""
  s = policy.sample(store, key, n)
  return sharding.data_rows((s.x, s.y, s.weight))


def run_phase(loop: Loop, opt_init, params, state, key, passes: int, lr_peak: float, scales,
              floor: float = 0.0):
  """One training phase of ``passes`` steps of ``loop`` (built on ``phase_step``) with a fresh
  optimizer (``opt_init``; re-created per stage, as DietCL's reference code). Returns (params,
  metric sums [1 + parts] or None when passes is 0)."""
  data = (state, jnp.float32(lr_peak), scales, jnp.float32(floor))
  (params, _), sums = loop((params, opt_init(params)), data, key, passes)
  return params, sums


@register("dietcl", inputs=("model", "model_kwargs", "batch_size", "init_params",
                            "max_step_size"))
def dietcl(*, num_classes: int, model: str = "vit_tiny", model_kwargs: Optional[dict] = None,
           batch_size: int = 64, lr: float = 1e-4, buffer_lr_scale: float = 0.1,
           weight_decay: float = 0.05, betas: Sequence[float] = (0.9, 0.95),
           layer_decay: float = 0.65, w_r: float = 50.0, mask_ratio: float = 0.75,
           norm_pix: bool = True, allocation: str = "paper", threshold: int = 400,
           joint_fraction: float = 0.8, memory_size: int = 2000, max_step_size: int = 4096,
           max_tasks: int = 256, epochs_per_step: float = 1.0, chunk: int = 8,
           init_params: Optional[dict] = None) -> Learner:
  """Builds DietCL (see the module docstring).

  Args:
    num_classes: K, the head's fixed maximum number of classes (the seen mask grows it).
    model, model_kwargs: a ViT of ``cljax.models`` (``vit_micro`` ... ``vit_base``) and its
      options (``patch``, config fields such as ``depth``, ``dtype``).
    batch_size: examples per pass (joint batches and buffer-only batches alike).
    lr: peak learning rate per 256 examples (scaled linearly to ``batch_size``, as in the code).
    buffer_lr_scale: lr factor of the buffer-only phase (reference code 0.1).
    weight_decay, betas, layer_decay: AdamW and layer-wise lr decay (0.05, (0.9, 0.95), 0.65).
    w_r: weight of the reconstruction loss (reference code 50).
    mask_ratio, norm_pix: MAE masking ratio and per-patch normalised targets.
    allocation: ``paper`` or ``reference_code`` (module docstring); ``threshold`` is the paper's
      B̄ in passes; ``joint_fraction`` the reference code's 0.8.
    memory_size: capacity of the task-balanced memory of labelled examples.
    max_step_size: capacity of each step store (labeled, unlabeled).
    max_tasks: time steps the memory tells apart; later steps share the last task id.
    epochs_per_step: passes (epochs over the step's rows) when ``end_of_step`` gets no budget.
    chunk: optimizer steps per jitted call (a ``lax.scan``).
    init_params: start from these parameters (e.g. an MAE-pretrained ViT of the same model).
  """
  if allocation not in ALLOCATIONS:
    raise ValueError(f"unknown allocation {allocation!r}; valid: {list(ALLOCATIONS)}")
  if batch_size < 3:
    raise ValueError(f"batch_size must be >= 3 (three sources per joint batch), got {batch_size}")
  for k, v in (("max_step_size", max_step_size), ("memory_size", memory_size),
               ("chunk", chunk), ("max_tasks", max_tasks)):
    if int(v) < 1:
      raise ValueError(f"{k} must be >= 1, got {v}")
  net = vit_net("dietcl", model, num_classes, model_kwargs)
  nu, nl, nb = source_split(batch_size, allocation)
  peak_lr = lr * batch_size / 256
  tx = optim.direction("adamw", weight_decay=weight_decay, betas=betas,
                       decay_mask=optim.matrices)
  store = buffers.get("append")
  memory = buffers.get("task_balanced")

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    k_net, k_l, k_u, k_m = jax.random.split(key, 4)
    params = net.init(k_net, x.shape[1:], init_params)
    ex = jax.ShapeDtypeStruct(x.shape[1:], jnp.float32)
    return {"params": params,
            "seen": jnp.zeros((num_classes,), bool),
            "step_cls": jnp.zeros((num_classes,), bool),
            "cur_l": store.init(k_l, max_step_size, ex, num_classes),
            "cur_u": store.init(k_u, max_step_size, ex, num_classes),
            "mem": memory.init(k_m, memory_size, ex, num_classes, max_tasks=max_tasks),
            "step": jnp.zeros((), jnp.int32)}

  @jax.jit
  def update(state, batch, key):
    """Stores the batch's labeled and unlabeled rows for this step; no training (0 passes)."""
    del key
    return store_rows(state, batch, "cur_l", "cur_u"), contract.info()

  def _joint_loss(params, state, key):
    ku, kl, kb, km = jax.random.split(key, 4)
    xu, _, wu = sample_rows(store, state["cur_u"], ku, nu)
    xl, yl, wl = sample_rows(store, state["cur_l"], kl, nl)
    xb, yb, wb = sample_rows(memory, state["mem"], kb, nb)
    l_r = (net.call(params, xu, "mae_loss", km, mask_ratio, norm_pix, wu) if nu
           else jnp.zeros(()))
    logits = net.apply(params, jnp.concatenate([xl, xb]))  # one forward for both CE terms
    l_m = masked_ce(logits[:nl], yl, wl, state["step_cls"])
    l_b = masked_ce(logits[nl:], yb, wb, state["seen"])
    return w_r * l_r + l_m + l_b, (l_r, l_m, l_b)

  def _buffer_loss(params, state, key):
    xb, yb, wb = sample_rows(memory, state["mem"], key, batch_size)
    l_b = masked_ce(net.apply(params, xb), yb, wb, state["seen"])
    return l_b, (jnp.zeros(()), jnp.zeros(()), l_b)

  @jax.jit
  def prepare(state):
    """The step's labelled rows enter the task-balanced memory (one task) before training."""
    cur = state["cur_l"]
    valid = jnp.arange(cur.y.shape[0]) < cur.count
    return {**state, "mem": memory.insert(state["mem"], cur.x, cur.y, valid)}

  @jax.jit
  def finish(state):
    return {**state, "cur_l": append_store.clear(state["cur_l"]),
            "cur_u": append_store.clear(state["cur_u"]),
            "step_cls": jnp.zeros_like(state["step_cls"]), "step": state["step"] + 1}

  joint_loop = Loop(phase_step(_joint_loss, tx), chunk=chunk, unroll=False)
  buffer_loop = Loop(phase_step(_buffer_loss, tx), chunk=chunk, unroll=False)
  scales_of = jax.jit(lambda p: vit_layer_scales(p, layer_decay))
  opt_init = jax.jit(tx.init)

  def end_of_step(state, key, budget=None):
    """Spends exactly ``budget`` passes (None: the default epochs): joint, then buffer-only."""
    k_joint, k_buf = jax.random.split(key)
    if budget is None:
      rows = int(state["cur_l"].count) + int(state["cur_u"].count)
      budget = contract.default_passes(epochs_per_step, rows, batch_size)
    joint, buf = phase_passes(budget, int(state["step"]), allocation, threshold, joint_fraction)
    state = prepare(state)
    params, scales = state["params"], scales_of(state["params"])
    sums = jnp.zeros((4,))
    for n, lp, k, lr_p in ((joint, joint_loop, k_joint, peak_lr),
                           (buf, buffer_loop, k_buf, peak_lr * buffer_lr_scale)):
      params, s = run_phase(lp, opt_init, params, state, k, n, lr_p, scales)
      if s is not None:
        sums = sums + s
    state = finish({**state, "params": params})
    passes = max(budget, 1)
    return state, contract.info(
        budget, sums[0] / passes, joint_passes=jnp.float32(joint),
        buffer_passes=jnp.float32(buf), loss_r=sums[1] / max(joint, 1),
        loss_m=sums[2] / max(joint, 1), loss_b=sums[3] / passes)

  @jax.jit
  def predict(state, x):
    return mask_logits(net.apply(state["params"], jnp.asarray(x, jnp.float32)), state["seen"])

  hp = dict(num_classes=num_classes, model=model, model_kwargs=model_kwargs,
            batch_size=batch_size, lr=lr, buffer_lr_scale=buffer_lr_scale,
            weight_decay=weight_decay, betas=tuple(betas), layer_decay=layer_decay, w_r=w_r,
            mask_ratio=mask_ratio, norm_pix=norm_pix, allocation=allocation, threshold=threshold,
            joint_fraction=joint_fraction, memory_size=memory_size, max_step_size=max_step_size,
            max_tasks=max_tasks, epochs_per_step=epochs_per_step, chunk=chunk,
            warm_start=init_params is not None)
  return Learner(name="dietcl", init=init, update=update, end_of_step=end_of_step,
                 predict=predict, hparams=hp)


def phase_step(loss_fn, tx):
  """The ``Loop`` step of a DietCL-style phase: lr ``lr_peak · half_cosine(i, stop) · scales``.

  ``loss_fn(params, state, key) -> (loss, parts)``. The loop's carry is (params, opt), its data
  (state, lr_peak, scales, floor); metrics are [loss, *parts].
  """
  def step(carry, data, key, i, stop):
    params, opt = carry
    state, lr_peak, scales, floor = data
    (loss, parts), g = jax.value_and_grad(loss_fn, has_aux=True)(params, state, key)
    lr_i = lr_peak * optim.half_cosine(i, stop, floor)
    params, opt = apply_updates(tx, params, opt, g, jax.tree.map(lambda s: lr_i * s, scales))
    return (params, opt), jnp.stack([loss, *parts])

  return step
