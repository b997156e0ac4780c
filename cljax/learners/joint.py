"""Joint upper bound of DietCL's comparison (Zhang et al., ICLR 2024): self-supervised training on
all unlabeled data, then fine-tuning on all labels, with the same total budget, split 80 / 20.

Semantics (a reference, like ``offline`` in ``replay.py``, not a streaming method):

* ``update`` keeps every row seen so far: unlabeled rows in one store, labelled rows in another
  (capacity ``stream_size`` each); 0 passes.
* ``end_of_step`` at step t restarts from the initialization (or ``init_params``, e.g. an
  MAE-pretrained ViT) and spends the *cumulative* budget B_0 + ... + B_t (the budgets the runner
  gave every step so far), so after the last step it has spent exactly what a streaming method
  spent over the whole run, all of it on all the data:

  - ``round(ssl_fraction · total)`` passes (0.8) of MAE reconstruction (``vit.mae_loss``, mask ratio
    0.75, normalised pixels) on batches of ``batch_size`` rows drawn from all unlabeled rows seen;
  - the rest (0.2) cross-entropy fine-tuning on batches drawn from all labelled rows seen, logits
    masked to the classes seen, with layer-wise lr decay (MAE fine-tuning practice);

  each phase a fresh AdamW (DietCL's optimizer pieces: ``_phases.phase_step``, the reference's
  half-cosine lr per phase, floored at ``min_lr``). With no unlabeled row yet the SSL passes are
  still charged (weight 0). The same regularisation as DietCL's (the reference trains its
  SSL-then-fine-tune trainer with it too, ``trainer/pretrain.py`` lines 11-18 and
  ``trainer/base.py`` lines 128-163): RandomResizedCrop + flip of MAE inputs (scale 0.2-1) and of
  labelled images (0.08-1), timm Mixup/CutMix with label smoothing on every fine-tuning batch.
* It therefore spends more than one step's budget at every step but the first: ``passes`` reports
  what it really spent (the cumulative budget), and it is not ``budgeted``, so the runner does not
  flag it. Only the final step's accuracy is the upper bound; earlier A(t) points are those of
  joint training on the data seen up to t with the budget spent up to t.
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
from cljax.ops import buffers
from cljax.ops import mixup as mixup_lib
from cljax.ops.losses import mask_logits
from cljax.train import early_stop as early_stop_lib
from cljax.train.loop import Loop


class State(NamedTuple):
  """The joint bound's state.

  params: the ViT + MAE decoder parameters after the last ``end_of_step``.
  init_params: the parameters every ``end_of_step`` restarts from (``init_params`` or ``init``'s).
  seen: [K] bool, classes with a labelled row so far.
  lab, unl: ``append`` stores of every labelled / unlabelled row so far (capacity
    ``stream_size`` each).
  step_rows: [] int32, valid rows of the current step (its default budget).
  total_budget: [] int32, passes given to all ended steps so far.
  """

  params: Any
  init_params: Any
  seen: jax.Array
  lab: Any
  unl: Any
  step_rows: jax.Array
  total_budget: jax.Array


@jax.jit
def update(state: State, batch: dict, key: jax.Array) -> tuple:
  """Stores the batch's labelled and unlabeled rows; no training (0 passes)."""
  del key
  valid, _ = contract.masks(batch)
  seen, lab, unl = _stores.store_split(state.seen, state.lab, state.unl, batch)
  return state._replace(seen=seen, lab=lab, unl=unl,
                        step_rows=state.step_rows + jnp.sum(valid).astype(jnp.int32)
                        ), contract.info()


@register("joint", inputs=("model", "model_kwargs", "batch_size", "init_params", "stream_size"))
def joint(*, num_classes: int, stream_size: Optional[int] = None, model: str = "vit_tiny",
          model_kwargs: Optional[dict] = None, batch_size: int = 64, accumulate: int = 1,
          optimizer: str = "adamw", lr: float = 1e-4, min_lr: float = _phases.MIN_LR,
          finetune_lr_scale: float = 1.0,
          weight_decay: float = 0.05,
          betas: Sequence[float] = (0.9, 0.95), layer_decay: float = 0.65,
          mask_ratio: float = 0.75, norm_pix: bool = True, ssl_fraction: float = 0.8,
          mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, mixup_prob: float = 1.0,
          switch_prob: float = 0.5, label_smoothing: float = 0.1, augment: bool = True,
          crop_scale: Sequence[float] = (0.08, 1.0),
          mae_crop_scale: Sequence[float] = (0.2, 1.0), flip: bool = True,
          epochs_per_step: float = 1.0, chunk: int = 8,
          init_params: Optional[dict] = None) -> Learner:
  """Builds the joint upper bound (see the module docstring).

  Args:
    num_classes: K, the head's fixed maximum number of classes.
    stream_size: examples in the whole stream (experiments pass it): capacity of each store.
    model, model_kwargs: the ViT, as for ``dietcl``.
    batch_size: rows per pass, in both phases.
    accumulate: micro-batches per AdamW step, as ``dietcl``'s.
    lr: peak lr per 256 examples (scaled linearly to ``batch_size`` x ``accumulate``); the
      fine-tuning phase uses
      lr × ``finetune_lr_scale``. min_lr: each phase's floor, as ``dietcl``'s.
    optimizer, weight_decay, betas: the direction (``cljax.optim.direction``; DietCL's reference
      code: AdamW, 0.05, (0.9, 0.95)).
    layer_decay: layer-wise lr decay of the fine-tuning phase (the SSL phase uses none).
    mask_ratio, norm_pix: MAE masking ratio and per-patch normalised targets.
    ssl_fraction: share of the cumulative budget spent on MAE (0.8), the rest on fine-tuning.
    mixup_alpha, cutmix_alpha, mixup_prob, switch_prob, label_smoothing, augment, crop_scale,
      mae_crop_scale, flip: the regularisation, as ``dietcl``'s (``_phases.Recipe``).
    epochs_per_step: a step's budget when ``end_of_step`` gets none: epochs over that step's rows.
    chunk: optimizer steps per jitted call (a ``lax.scan``).
    init_params: restart point of every step (e.g. ``cljax.train.pretrain.train_mae`` params).
  """
  if stream_size is None:
    raise ValueError("learner 'joint' keeps every example of the stream: give stream_size "
                     "(examples in the stream)")
  for k, v in (("stream_size", stream_size), ("batch_size", batch_size), ("chunk", chunk)):
    if int(v) < 1:
      raise ValueError(f"{k} must be >= 1, got {v}")
  if not 0.0 <= float(ssl_fraction) <= 1.0:
    raise ValueError(f"ssl_fraction must be in [0, 1], got {ssl_fraction}")
  net = _vit.vit_net("joint", model, num_classes, model_kwargs)
  peak_lr = lr * batch_size * accumulate / 256  # per 256 examples of the effective batch
  floor_lr = min_lr * batch_size * accumulate / 256
  recipe = _phases.Recipe(float(mixup_alpha), float(cutmix_alpha), float(mixup_prob),
                          float(switch_prob), float(label_smoothing), bool(augment),
                          tuple(crop_scale), tuple(mae_crop_scale), bool(flip))
  tx = optim.direction(optimizer, weight_decay=weight_decay, betas=betas,
                       decay_mask=optim.matrices, accumulate=accumulate)
  store = buffers.get("append")

  def init(key, example_batch):
    x = jnp.asarray(example_batch["x"])
    k_net, k_l, k_u = jax.random.split(key, 3)
    params = net.init(k_net, x.shape[1:], init_params)
    ex = jax.ShapeDtypeStruct(x.shape[1:], jnp.float32)
    return State(params=params, init_params=params, seen=jnp.zeros((num_classes,), bool),
                 lab=store.init(k_l, stream_size, ex, num_classes),
                 unl=store.init(k_u, stream_size, ex, num_classes),
                 step_rows=jnp.zeros((), jnp.int32), total_budget=jnp.zeros((), jnp.int32))

  def ssl_loss(params, state: State, key):
    """MAE reconstruction on ``batch_size`` unlabelled rows; no parts."""
    kx, km, ka = jax.random.split(key, 3)
    xu, _, wu = _stores.sample_rows(store, state.unl, kx, batch_size)
    xu = recipe.images(ka, xu, mae=True)
    return net.call(params, xu, "mae_loss", km, mask_ratio, norm_pix, wu), ()

  def ft_loss(params, state: State, key):
    """Mixed soft-target CE over the seen classes on ``batch_size`` labelled rows; no parts."""
    k_s, k_m = jax.random.split(key)
    xl, yl, wl = _stores.sample_rows(store, state.lab, k_s, batch_size)
    b = recipe.batch(k_m, xl, yl, wl, state.seen)
    return mixup_lib.soft_cross_entropy(net.apply(params, b.x), b.targets, b.weight,
                                        state.seen), ()

  ssl_loop = Loop(_phases.phase_step(ssl_loss, tx, accumulate), chunk=chunk, unroll=False,
                  accumulate=accumulate)
  ft_loop = Loop(_phases.phase_step(ft_loss, tx, accumulate), chunk=chunk, unroll=False,
                 accumulate=accumulate)
  opt_init = jax.jit(tx.init)
  scales_of = jax.jit(lambda p: _vit.vit_layer_scales(p, layer_decay))
  ones_of = jax.jit(lambda p: jax.tree.map(jnp.ones_like, _vit.vit_layer_scales(p, 1.0)))

  @jax.jit
  def predict(state: State, x):
    return mask_logits(net.apply(state.params, jnp.asarray(x, jnp.float32)), state.seen)

  def end_of_step(state: State, key, budget=None, progress=None, early_stop=None):
    """Restarts from the initialization and spends the cumulative budget (module docstring);
    with ``early_stop`` the fine-tuning phase may stop early, keeping its best parameters (the
    MAE phase trains no classifier and always runs)."""
    k_ssl, k_ft = jax.random.split(key)
    if budget is None:
      budget = contract.default_passes(epochs_per_step, int(state.step_rows), batch_size)
    total = int(state.total_budget) + budget
    n_ssl = int(round(ssl_fraction * total))
    n_ft = total - n_ssl
    start = state.init_params
    params, s_ssl, _ = _phases.run_phase(ssl_loop, opt_init, start, state, k_ssl, n_ssl,
                                         peak_lr, ones_of(start), floor_lr,
                                         progress)  # MAE: no layer decay
    params, s_ft, stopped = _phases.run_phase(
        ft_loop, opt_init, params, state, k_ft, n_ft, peak_lr * finetune_lr_scale,
        scales_of(params), floor_lr, progress, early_stop,
        lambda p, x: predict(state._replace(params=p), x))
    planned, n_ft = n_ft, (n_ft if stopped is None else stopped.passes)
    state = state._replace(params=params, step_rows=jnp.zeros((), jnp.int32),
                           total_budget=jnp.int32(total))
    mean = lambda s, n: s[0] / n if s is not None else jnp.float32(jnp.nan)  # noqa: E731
    return state, contract.info(n_ssl + n_ft, mean(s_ft, n_ft), ssl_passes=jnp.float32(n_ssl),
                                finetune_passes=jnp.float32(n_ft), loss_r=mean(s_ssl, n_ssl),
                                **early_stop_lib.extra(stopped, planned))

  # A reference: it spends the cumulative budget at every step.
  return Learner(name="joint", init=init, update=update, end_of_step=end_of_step,
                 predict=predict, budgeted=False, early_stopping=True)
