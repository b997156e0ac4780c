"""DietCL (Zhang et al., ICLR 2024, "Continual Learning on a Diet"): semi-supervised continual
learning under a per-step compute budget, with a ViT encoder + MAE decoder.

Losses at time step t (``cljax/models/vit.py`` holds the model):

* L_r: MAE reconstruction (mask ratio 0.75, normalised-pixel targets, MSE over masked patches) on
  the step's *unlabeled* rows (``labeled`` False);
* L_m: cross-entropy on the step's *labeled* rows, with the logits of classes absent from this
  step's labels masked out (in a class-incremental stream: the classes not introduced at t);
* L_b: cross-entropy over all seen classes on a task-balanced buffer of the labelled data so far
  (the step's labels are inserted before training, so L_b covers all labelled data so far).

Joint loss ``w_r·L_r + L_m + L_b``, one joint batch of ``batch_size`` examples = one pass.
Budget allocation (``allocation``):

* ``paper``: the first min(budget, B̄) passes are joint, each batch split equally among the three
  sources; the passes above B̄ (``threshold``) are buffer-only fine-tuning with L_b;
* ``reference_code``: 80 % of the passes joint (100 % at the first step), 20 % buffer-only at
  lr × ``buffer_lr_scale``; joint batches mix unlabeled / labeled / buffer as 102 / 77 / 77 of 256,
  scaled to ``batch_size``.

Optimizer (reference code): AdamW, betas (0.9, 0.95), weight decay 0.05 (not on biases, norms,
position embeddings, mask token), a half-cosine decay over each phase, layer-wise lr decay 0.65
(a scale by parameter path, ``vit.layer_id``), re-created at every stage (each phase of each step).
The optimizer state therefore never outlives ``end_of_step`` and is not part of the learner state.

Like the SGD learners, training is a host loop over jitted chunks of fixed shape (masked past the
phase's end), so no budget ever recompiles. The chunk body is a ``lax.scan``: the ViT has no
convolution (patch embedding is a matmul), so the XLA:CPU conv-in-loop slowdown does not apply.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cljax.learner import Learner, register
from cljax.learners import _common
from cljax.models import vit as vit_lib
from cljax.ops import buffers
from cljax.ops import sharding

ALLOCATIONS = ("paper", "reference_code")


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


def task_balanced_insert(mem: dict, cur: dict, task_id: jax.Array, key: jax.Array,
                         max_tasks: int) -> dict:
  """Adds the valid rows of ``cur`` (a buffer) to the task-balanced memory ``mem`` as task
  ``task_id``.

  ``mem`` is an ``ops.buffers`` dict plus ``task`` [capacity] int32 (-1 = empty). The new
  allocation is water-filling: every task keeps min(its examples, L) slots for the largest level L
  that fits, leftover slots go one each to the first tasks with more examples; a task over its
  quota keeps a uniformly random subset. Fixed shapes throughout.
  """
  cap = buffers.capacity(mem)
  k_old, k_new = jax.random.split(key)
  task = mem["task"]
  old_valid = task >= 0
  cnt = jnp.zeros((max_tasks,), jnp.int32).at[jnp.where(old_valid, task, max_tasks)].add(
      1, mode="drop")
  cnt = cnt.at[task_id].add(cur["count"])
  lo, hi = jnp.int32(0), jnp.int32(cap)  # invariant: sum(min(cnt, lo)) <= cap
  for _ in range(max(1, math.ceil(math.log2(cap + 1))) + 1):
    mid = (lo + hi + 1) // 2
    ok = jnp.sum(jnp.minimum(cnt, mid)) <= cap
    lo, hi = jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)
  quota = jnp.minimum(cnt, lo)
  left = cap - jnp.sum(quota)
  eligible = cnt > quota
  quota = quota + (eligible & (jnp.cumsum(eligible) - 1 < left)).astype(jnp.int32)
  # Old slots: keep a random subset of each task of its quota size (rank within task by noise).
  score = jax.random.uniform(k_old, (cap,))
  t_sort = jnp.where(old_valid, task, max_tasks)
  order = jnp.lexsort((score, t_sort))
  st = t_sort[order]
  rank_sorted = jnp.arange(cap) - jnp.searchsorted(st, st, side="left")
  rank = jnp.zeros((cap,), jnp.int32).at[order].set(rank_sorted.astype(jnp.int32))
  keep = old_valid & (rank < quota[jnp.clip(task, 0, max_tasks - 1)])
  kept_n = jnp.sum(keep)
  new_take = quota[task_id] - jnp.sum(keep & (task == task_id))
  # Compact: kept slots first (stable), then a random subset of the new rows.
  src_old = jnp.argsort(~keep, stable=True)
  cur_cap = buffers.capacity(cur)
  cur_valid = jnp.arange(cur_cap) < cur["count"]
  perm = jnp.argsort(jnp.where(cur_valid, jax.random.uniform(k_new, (cur_cap,)), 2.0))
  i = jnp.arange(cap)
  j = i - kept_n
  from_new = (j >= 0) & (j < new_take)
  src_new = perm[jnp.clip(j, 0, cur_cap - 1)]
  is_old = i < kept_n
  sel = from_new.reshape((cap,) + (1,) * (mem["x"].ndim - 1))
  x = jnp.where(sel, cur["x"][src_new].astype(mem["x"].dtype), mem["x"][src_old])
  y = jnp.where(from_new, cur["y"][src_new], jnp.where(is_old, mem["y"][src_old], -1))
  new_task = jnp.where(from_new, task_id, jnp.where(is_old, task[src_old], -1))
  k = mem["class_count"].shape[0]
  return {**mem, "x": x, "y": y, "task": new_task,
          "count": (kept_n + new_take).astype(jnp.int32),
          "seen": mem["seen"] + cur["count"],
          "class_count": jnp.zeros((k,), jnp.int32).at[jnp.where(y >= 0, y, k)].add(
              1, mode="drop"),
          "class_seen": mem["class_seen"] + cur["class_seen"]}


def masked_ce(logits: jax.Array, y: jax.Array, weight: jax.Array,
              allowed: jax.Array) -> jax.Array:
  """Weighted mean cross-entropy over the classes in ``allowed`` [K] bool only.

  logits [B, K], y [B], weight [B]. L_m uses allowed = this step's classes, so old-class logits get
  no gradient from current data; L_b uses allowed = all seen classes.
  """
  return _common.cross_entropy(_common.mask_logits(logits, allowed), y, weight)


def _path_names(path) -> tuple:
  return tuple(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p))) for p in path)


def layer_scales(params: dict, depth: int, decay: float) -> dict:
  """Per-parameter lr multipliers decay^(depth + 1 - layer_id) (``vit.layer_id``)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: jnp.float32(decay ** (depth + 1 - vit_lib.layer_id(_path_names(p), depth))),
      params)


def decay_mask(params: dict) -> dict:
  """True where weight decay applies: matrices, not biases, norms, position embeddings, token."""
  def f(p, v):
    names = _path_names(p)
    return v.ndim >= 2 and names[0] not in ("pos_embed", "dec_pos_embed", "mask_token")
  return jax.tree_util.tree_map_with_path(f, params)


def sample_rows(buf: dict, key: jax.Array, n: int):
  """n rows drawn uniformly with replacement from an ``ops.buffers`` buffer: x [n, ...], y [n],
  weight [n] (all 0 when the buffer is empty, so an empty source adds nothing to a loss).
  Split over the devices of the run's mesh (``ops.sharding.data_rows``) when n divides them."""
  idx = buffers.sample_indices(key, buf["count"], n)
  return sharding.data_rows(
      (buf["x"][idx], buf["y"][idx], jnp.full((n,), buf["count"] > 0, jnp.float32)))


VIT_MODELS = tuple(f"vit_{c}" for c in vit_lib.CONFIGS)


def vit_spec(learner: str, model: Optional[str], model_kwargs: Optional[dict], vit: str,
             patch: Optional[int], vit_kwargs: Optional[dict]) -> tuple[str, dict]:
  """(ViT config name, ``vit.create`` keyword arguments) of a learner's ViT.

  ``model`` (a registry name ``vit_micro`` ... ``vit_base``) with ``model_kwargs`` (``patch`` and
  config overrides) names the same network as ``cljax.models.create(model, ...)``, so
  ``_common.pure_model(model, shape, K, key, model_kwargs).params`` (e.g. ``train_mae``'s output)
  fit as ``init_params`` (``LazyViT``). Without ``model``: config ``vit`` with ``patch`` and
  ``vit_kwargs``.
  """
  kw = dict(vit_kwargs or {})
  if patch is not None:
    kw["patch"] = patch
  if model is None:
    return vit, kw
  if model not in VIT_MODELS:
    raise ValueError(f"learner {learner!r} needs a ViT with an MAE decoder; model {model!r} is "
                     f"not one (valid: {list(VIT_MODELS)})")
  return model[len("vit_"):], {**kw, **(model_kwargs or {})}


class LazyViT:
  """A learner's ViT, built by its ``init`` (which first sees the input shape) exactly as
  ``models.create`` builds ``vit_<config>`` (same key use, so the same initial params).

  ``build(key, x) -> params`` (``init_params`` when given, checked against the structure);
  ``vit`` (a ``vit.PureViT``) and ``scales`` (per-layer lr factors, ``layer_scales``) are read by
  the jitted functions at trace time and raise a clear error before ``build``.
  """

  def __init__(self, learner: str, config: str, kw: dict, num_classes: int, layer_decay: float,
               init_params: Optional[dict] = None):
    self._learner, self._config, self._kw, self._k = learner, config, kw, num_classes
    self._decay, self._init = layer_decay, init_params
    self._vit, self.scales = None, None

  def build(self, key: jax.Array, x: jax.Array) -> dict:
    shape = tuple(x.shape[1:])
    self._vit = vit_lib.pure_vit(vit_lib.create(shape, self._k, nnx.Rngs(params=key),
                                                config=self._config, **self._kw))
    params = _common.warm_start(self._vit.params, self._init, self._learner,
                                f"ViT built here (config {self._config!r}, options "
                                f"{self._kw}, inputs {shape})")
    self.scales = layer_scales(params, self._vit.depth, self._decay)
    return params

  @property
  def vit(self) -> vit_lib.PureViT:
    if self._vit is None:
      raise RuntimeError(f"learner {self._learner!r}: call init(key, example_batch) before "
                         "update/predict")
    return self._vit


def store_rows(state: dict, batch: dict, num_classes: int, lab_key: str, unl_key: str) -> dict:
  """``state`` with the batch's valid labelled rows appended to buffer ``lab_key``, its valid
  unlabeled rows to ``unl_key`` (label 0) and the labelled classes added to ``seen`` (and to
  ``step_cls`` when the state has one). Batch: x [B, ...], y [B], valid [B], labeled [B]."""
  lab = batch["valid"] & batch["labeled"]
  unl = batch["valid"] & ~batch["labeled"]
  y = jnp.where(lab, batch["y"], 0).astype(jnp.int32)
  new_cls = jnp.any(jax.nn.one_hot(y, num_classes, dtype=bool) & lab[:, None], axis=0)
  out = {**state, "seen": state["seen"] | new_cls,
         lab_key: buffers.append(state[lab_key], batch["x"], y, lab),
         unl_key: buffers.append(state[unl_key], batch["x"], jnp.zeros_like(y), unl)}
  if "step_cls" in state:
    out["step_cls"] = state["step_cls"] | new_cls
  return out


def adamw(weight_decay: float, betas=(0.9, 0.95)) -> optax.GradientTransformation:
  """AdamW direction without the lr: Adam moments + decoupled decay on matrices (``decay_mask``).

  The lr (half-cosine, per layer) is applied by ``make_chunk``, so one compiled program serves
  every phase length and peak lr.
  """
  return optax.chain(optax.scale_by_adam(*betas, eps=1e-8), optax.masked(
      optax.add_decayed_weights(weight_decay), decay_mask))


def make_chunk(loss_fn, tx: optax.GradientTransformation, chunk: int, unroll: int = 1):
  """A jitted run of ``chunk`` optimizer steps of a phase, masked past the phase's end.

  ``loss_fn(params, data, key) -> (loss, parts tuple)``. The returned function
  ``f(params, opt, data, key, start, stop, lr_peak, scales) -> (params, opt, sums)`` runs steps
  i = start .. start + chunk - 1 (only those with i < stop) with lr ``lr_peak · ½(1 + cos(π i /
  stop)) · scales`` (``scales`` a params-shaped pytree of per-layer factors); ``sums`` [1 + parts]
  adds up the loss and its parts over the active steps. ``start``/``stop`` are traced: no budget
  recompiles.
  """
  def run(params, opt, data, key, start, stop, lr_peak, scales):
    def body(carry, i):
      params, opt = carry
      (loss, parts), g = jax.value_and_grad(loss_fn, has_aux=True)(
          params, data, jax.random.fold_in(key, i))
      upd, new_opt = tx.update(g, opt, params)
      lr_i = lr_peak * 0.5 * (1 + jnp.cos(jnp.pi * i / jnp.maximum(stop, 1)))
      new_params = jax.tree.map(lambda p, u, s: p - lr_i * s * u, params, upd, scales)
      active = i < stop
      keep = lambda a, b: jnp.where(active, a, b)  # noqa: E731
      out = jnp.where(active, jnp.stack([loss, *parts]), 0.0)
      return (jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt, opt)), out

    (params, opt), outs = jax.lax.scan(body, (params, opt), start + jnp.arange(chunk),
                                       unroll=unroll)
    return params, opt, outs.sum(0)

  return jax.jit(run)


def run_phase(chunk_fn, opt_init, params, data, key, passes: int, lr_peak: float, scales,
              chunk: int):
  """Host loop of one training phase: a fresh optimizer (re-created per stage, as DietCL's
  reference code), ``passes`` steps in jitted chunks of ``make_chunk``. Returns (params, sums)."""
  opt = opt_init(params)
  sums = None
  for start in range(0, passes, chunk):
    params, opt, s = chunk_fn(params, opt, data, key, jnp.int32(start), jnp.int32(passes),
                              jnp.float32(lr_peak), scales)
    sums = s if sums is None else sums + s
  return params, sums


@register("dietcl")
def dietcl(*, num_classes: int, vit: str = "tiny", patch: Optional[int] = None,
           vit_kwargs: Optional[dict] = None, model: Optional[str] = None,
           model_kwargs: Optional[dict] = None, batch_size: int = 64, lr: float = 1e-4,
           buffer_lr_scale: float = 0.1, weight_decay: float = 0.05, betas=(0.9, 0.95),
           layer_decay: float = 0.65, w_r: float = 50.0, mask_ratio: float = 0.75,
           norm_pix: bool = True, allocation: str = "paper", threshold: int = 400,
           joint_fraction: float = 0.8, memory_size: int = 2000, max_step_size: int = 4096,
           max_tasks: int = 256, epochs_per_step: float = 1.0, chunk: int = 8,
           unroll: int = 1, init_params: Optional[dict] = None) -> Learner:
  """Builds DietCL (see module docstring).

  Args:
    num_classes: K, the head's fixed maximum number of classes (the seen mask grows it).
    vit, patch, vit_kwargs: ViT config name (micro/tiny/small/base), patch side (None: default for
      the image size, see ``vit.create``) and overrides of the config's fields.
    model, model_kwargs: alternatively a registry name (``vit_micro`` ... ``vit_base``) and its
      options (``patch``, config fields), as the other learners take them; it wins over ``vit``.
      ``_common.pure_model(model, ...)`` params (e.g. ``cljax.train.mae.train_mae``) then fit
      ``init_params``.
    batch_size: examples per pass (joint batches and buffer-only batches alike).
    lr: peak learning rate per 256 examples (scaled linearly to ``batch_size``, as in the code).
    buffer_lr_scale: lr factor of the buffer-only phase (reference code 0.1).
    weight_decay, betas, layer_decay: AdamW and layer-wise lr decay (0.05, (0.9, 0.95), 0.65).
    w_r: weight of the reconstruction loss (reference code 50).
    mask_ratio, norm_pix: MAE masking ratio and per-patch normalised targets.
    allocation: ``paper`` or ``reference_code`` (module docstring); ``threshold`` is the paper's
      B̄ in passes; ``joint_fraction`` the reference code's 0.8.
    memory_size: capacity of the task-balanced buffer of labelled examples.
    max_step_size: capacity of each current-step buffer (labeled, unlabeled).
    max_tasks: time steps the buffer tells apart; later steps share the last task id.
    epochs_per_step: default passes (epochs over the step's rows) when the runner sets no budget.
    chunk, unroll: steps per jitted call, and the ``lax.scan`` unroll inside it.
    init_params: start from these parameters (e.g. an MAE-pretrained ViT of the same config).
  """
  if allocation not in ALLOCATIONS:
    raise ValueError(f"unknown allocation {allocation!r}; valid: {list(ALLOCATIONS)}")
  if batch_size < 3:
    raise ValueError(f"batch_size must be >= 3 (three sources per joint batch), got {batch_size}")
  for k, v in (("max_step_size", max_step_size), ("memory_size", memory_size),
               ("num_classes", num_classes), ("chunk", chunk), ("max_tasks", max_tasks)):
    if int(v) < 1:
      raise ValueError(f"{k} must be >= 1, got {v}")
  vit_config, vit_kw = vit_spec("dietcl", model, model_kwargs, vit, patch, vit_kwargs)
  nu, nl, nb = source_split(batch_size, allocation)
  peak_lr = lr * batch_size / 256
  base_tx = adamw(weight_decay, betas)
  net = LazyViT("dietcl", vit_config, vit_kw, num_classes, layer_decay, init_params)

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    params = net.build(key, x)
    shape = x.shape[1:]
    mem = buffers.init(memory_size, shape, num_classes)
    return {"params": params,
            "seen": jnp.zeros((num_classes,), bool),
            "step_cls": jnp.zeros((num_classes,), bool),
            "cur_l": buffers.init(max_step_size, shape, num_classes),
            "cur_u": buffers.init(max_step_size, shape, num_classes),
            "mem": {**mem, "task": jnp.full((memory_size,), -1, jnp.int32)},
            "step": jnp.zeros((), jnp.int32)}

  def update(state, batch, key):
    """Stores the batch's labeled and unlabeled rows for this step; no training (0 passes)."""
    del key
    return store_rows(state, batch, num_classes, "cur_l", "cur_u"), {"passes": jnp.float32(0.0)}

  def _joint_loss(params, state, key):
    f = net.vit
    ku, kl, kb, km = jax.random.split(key, 4)
    xu, _, wu = sample_rows(state["cur_u"], ku, nu)
    xl, yl, wl = sample_rows(state["cur_l"], kl, nl)
    xb, yb, wb = sample_rows(state["mem"], kb, nb)
    l_r = f.mae_loss(params, xu, km, mask_ratio, norm_pix, wu) if nu else jnp.zeros(())
    logits = f.logits(params, jnp.concatenate([xl, xb]))  # one forward for both CE terms
    l_m = masked_ce(logits[:nl], yl, wl, state["step_cls"])
    l_b = masked_ce(logits[nl:], yb, wb, state["seen"])
    return w_r * l_r + l_m + l_b, (l_r, l_m, l_b)

  def _buffer_loss(params, state, key):
    xb, yb, wb = sample_rows(state["mem"], key, batch_size)
    l_b = masked_ce(net.vit.logits(params, xb), yb, wb, state["seen"])
    return l_b, (jnp.zeros(()), jnp.zeros(()), l_b)

  def _prepare(state, key):
    """Inserts the step's labelled rows into the task-balanced buffer before training."""
    tid = jnp.minimum(state["step"], max_tasks - 1)
    return {**state, "mem": task_balanced_insert(state["mem"], state["cur_l"], tid, key,
                                                 max_tasks)}

  def _finish(state):
    return {**state, "cur_l": buffers.clear(state["cur_l"]),
            "cur_u": buffers.clear(state["cur_u"]),
            "step_cls": jnp.zeros_like(state["step_cls"]), "step": state["step"] + 1}

  prepare_j, finish_j = jax.jit(_prepare), jax.jit(_finish)
  joint_j = make_chunk(_joint_loss, base_tx, chunk, unroll)
  buffer_j = make_chunk(_buffer_loss, base_tx, chunk, unroll)
  opt_init_j = jax.jit(base_tx.init)

  def end_of_step(state, key, budget):
    """Spends exactly ``budget`` passes (default epochs if < 0): joint phase, then buffer-only."""
    k_mem, k_joint, k_buf = jax.random.split(key, 3)
    budget = int(budget)
    if budget < 0:
      rows = int(state["cur_l"]["count"]) + int(state["cur_u"]["count"])
      budget = math.ceil(epochs_per_step * rows / batch_size)
    joint, buf = phase_passes(budget, int(state["step"]), allocation, threshold, joint_fraction)
    state = prepare_j(state, k_mem)
    params = state["params"]
    sums = jnp.zeros((4,))
    for n, fn, k, lr_p in ((joint, joint_j, k_joint, peak_lr),
                           (buf, buffer_j, k_buf, peak_lr * buffer_lr_scale)):
      params, s = run_phase(fn, opt_init_j, params, state, k, n, lr_p, net.scales, chunk)
      if s is not None:
        sums = sums + s
    state = finish_j({**state, "params": params})
    passes = max(budget, 1)
    return state, {"passes": jnp.float32(budget), "joint_passes": jnp.float32(joint),
                   "buffer_passes": jnp.float32(buf),
                   "loss": sums[0] / passes, "loss_r": sums[1] / max(joint, 1),
                   "loss_m": sums[2] / max(joint, 1), "loss_b": sums[3] / passes}

  # The compiled pieces, so tests can check that no step size or budget recompiles them.
  end_of_step.jitted = {"prepare": prepare_j, "finish": finish_j, "joint": joint_j,
                        "buffer": buffer_j, "opt_init": opt_init_j}

  def predict(state, x):
    return _common.mask_logits(net.vit.logits(state["params"], x), state["seen"])

  hp = dict(num_classes=num_classes, vit=vit_config, vit_kwargs=vit_kw, model=model,
            batch_size=batch_size, lr=lr,
            buffer_lr_scale=buffer_lr_scale, weight_decay=weight_decay, betas=tuple(betas),
            layer_decay=layer_decay, w_r=w_r, mask_ratio=mask_ratio, norm_pix=norm_pix,
            allocation=allocation, threshold=threshold, joint_fraction=joint_fraction,
            memory_size=memory_size, max_tasks=max_tasks, epochs_per_step=epochs_per_step)
  return Learner(name="dietcl", init=init, update=jax.jit(update), predict=jax.jit(predict),
                 end_of_step=end_of_step, hparams=hp)
