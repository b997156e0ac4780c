"""Optimizers and learning-rate schedules (optax), the one place every learner builds them.

* ``direction(name, ...)``: an optimizer without its learning rate (a ``GradientTransformation``
  whose updates are to be multiplied by ``-lr``). Learners whose lr changes per step inside jit
  (REMIND's per-class schedule, DietCL's per-layer half-cosine) scale it themselves.
* ``build(name, lr, ...)``: the optimizer with its learning rate (a float or an optax schedule).
* ``accumulate_gradients(tx, k)`` (or ``accumulate=k`` of both): gradient accumulation, one
  optimizer step per k micro-batches with their mean gradient (a batch k times larger in the
  memory of one).

``OPTIMIZERS`` by name (the usual optax/PyTorch meanings):

========  =================================================================================
sgd       d = momentum·d + g + wd·θ (torch order: decay, then momentum; momentum 0: plain SGD)
momentum  sgd whose ``momentum`` must be > 0 (heavy ball; the name users look for)
adam      Adam moments of g + wd·θ (L2, torch's ``Adam(weight_decay=)``)
adamw     Adam moments of g, plus wd·θ decoupled (Loshchilov and Hutter)
rmsprop   g / sqrt(ν + eps), ν ← rms_decay·ν + (1 − rms_decay)·g², of g + wd·θ (``optax.rmsprop``)
adagrad   g / sqrt(Σg² + eps), Σg² from 0.1 (``optax.adagrad``), of g + wd·θ
lamb      Adam direction plus decoupled wd·θ, scaled per leaf by ‖θ‖ / ‖direction‖ (You et al.
          2020; ``optax.lamb``)
========  =================================================================================

``momentum`` is read by sgd and momentum only; ``betas`` by adam, adamw and lamb. ``eps`` None
takes optax's default of the optimizer (1e-8; adagrad 1e-7; lamb 1e-6). Decay applies where
``decay_mask(params)`` is True: by default everything but batch-norm running statistics
(``not_stats``), which are not weights.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from cljax.models.pure import path_names

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad", "lamb")
_EPS = {"adagrad": 1e-7, "lamb": 1e-6}  # optax's defaults; every other optimizer: 1e-8
_STAT_LEAVES = ("mean", "var")  # nnx.BatchNorm's running statistics in a pure dict


def not_stats(params) -> dict:
  """True on every leaf but batch-norm running statistics (leaves named ``mean``/``var``)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not (path and getattr(path[-1], "key", None) in _STAT_LEAVES), params)


def matrices(params) -> dict:
  """True on weight matrices only: not biases, norms, position embeddings or mask tokens (the
  MAE / ViT fine-tuning convention for weight decay)."""
  def f(path, v):
    names = path_names(path)
    return v.ndim >= 2 and names[0] not in ("pos_embed", "dec_pos_embed", "mask_token")
  return jax.tree_util.tree_map_with_path(f, params)


def direction(name: str, *, momentum: float = 0.9, weight_decay: float = 0.0,
              betas: Sequence[float] = (0.9, 0.999), eps: Optional[float] = None,
              decay_mask: Callable = not_stats, rms_decay: float = 0.9,
              accumulate: int = 1) -> optax.GradientTransformation:
  """Optimizer ``name`` (one of ``OPTIMIZERS``, module docstring) without the learning rate;
  multiply its updates by -lr. ``accumulate`` k > 1: ``accumulate_gradients(..., k)``."""
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; valid: {list(OPTIMIZERS)}")
  if name == "momentum" and not momentum > 0:
    raise ValueError(f"optimizer 'momentum' needs momentum > 0, got {momentum!r}; "
                     "use 'sgd' with momentum=0 for plain SGD")
  eps = _EPS.get(name, 1e-8) if eps is None else eps
  decay = optax.masked(optax.add_decayed_weights(weight_decay), decay_mask)
  if name in ("sgd", "momentum"):
    tx = optax.chain(decay, optax.trace(decay=momentum) if momentum else optax.identity())
  elif name == "adam":
    tx = optax.chain(decay, optax.scale_by_adam(*betas, eps=eps))
  elif name == "adamw":
    tx = optax.chain(optax.scale_by_adam(*betas, eps=eps), decay)
  elif name == "rmsprop":
    tx = optax.chain(decay, optax.scale_by_rms(decay=rms_decay, eps=eps))
  elif name == "adagrad":
    tx = optax.chain(decay, optax.scale_by_rss(eps=eps))
  else:  # lamb
    tx = optax.chain(optax.scale_by_adam(*betas, eps=eps), decay, optax.scale_by_trust_ratio())
  return accumulate_gradients(tx, accumulate)


def build(name: str, lr, *, momentum: float = 0.9, weight_decay: float = 0.0,
          betas: Sequence[float] = (0.9, 0.999), eps: Optional[float] = None,
          decay_mask: Callable = not_stats, rms_decay: float = 0.9,
          accumulate: int = 1) -> optax.GradientTransformation:
  """``direction(name, ...)`` followed by the learning rate ``lr`` (float or optax schedule;
  a schedule counts optimizer steps, i.e. every ``accumulate`` micro-batches)."""
  tx = optax.chain(direction(name, momentum=momentum, weight_decay=weight_decay, betas=betas,
                             eps=eps, decay_mask=decay_mask, rms_decay=rms_decay),
                   optax.scale_by_learning_rate(lr))
  return accumulate_gradients(tx, accumulate)


def accumulate_gradients(tx: optax.GradientTransformation,
                         k: int) -> optax.GradientTransformation:
  """``tx`` applied once every ``k`` calls to the mean of the k gradients given since its last
  step; the other calls return zero updates and leave ``tx``'s state as it was
  (``optax.MultiSteps``). k = 1: ``tx`` itself.

  Gradient accumulation: k micro-batches of size b train like one batch of k·b (DietCL's
  reference reaches batch 1,024 this way) in the memory of one. Every micro-batch is one
  forward-backward pass, so a learner charges k passes per optimizer step. The state's fixed
  shapes (a counter and a gradient sum shaped like the parameters) keep the update jittable. A
  learner that re-creates its optimizer each step or phase (DietCL, joint, CaSSLe, L2P, GDumb,
  offline) drops a last group of fewer than k micro-batches: charged, never applied.
  """
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"accumulate must be an integer >= 1 (micro-batches per optimizer step), "
                     f"got {k!r}")
  return tx if k == 1 else optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()


def step_schedule(lr: float, total_steps: int, milestones: Sequence[float] = (),
                  factor: float = 0.1) -> optax.Schedule:
  """``lr``, multiplied by ``factor`` at each milestone (fractions of training in (0, 1),
  increasing; step round(f · total_steps) is the first at the lower rate). REMIND's base
  initialisation: 40 epochs with x0.1 every 15, i.e. (0.375, 0.75). Empty: constant."""
  ms = [float(m) for m in milestones]
  if any(not 0.0 < m < 1.0 for m in ms) or ms != sorted(ms):
    raise ValueError(f"lr_milestones must be increasing fractions of training in (0, 1), got {ms}")
  bounds: dict = {}
  for m in ms:  # milestones rounding to the same step multiply there
    b = max(1, round(m * total_steps))
    bounds[b] = bounds.get(b, 1.0) * float(factor)
  return optax.piecewise_constant_schedule(float(lr), bounds)


def warmup_cosine(peak: float, total_steps: int, warmup_fraction: float = 0.05) -> optax.Schedule:
  """Linear warmup over ``warmup_fraction`` of the steps, then cosine decay to 0 (MAE)."""
  warmup = int(warmup_fraction * total_steps)
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1))


def half_cosine(i: jax.Array, stop: jax.Array, floor: float = 0.0) -> jax.Array:
  """Factor ½(1 + cos(π i / stop)) of step i of ``stop``, floored at ``floor`` (traced i, stop)."""
  f = 0.5 * (1.0 + jnp.cos(jnp.pi * i / jnp.maximum(stop, 1)))
  return jnp.maximum(f, floor)


def layer_scales(params, layer_of: Callable[[tuple], int], num_layers: int,
                 decay: float) -> dict:
  """Per-parameter lr multipliers decay^(num_layers + 1 - layer_of(path)) (layer-wise lr decay,
  BEiT / MAE fine-tuning); ``layer_of`` maps a parameter's path names to its layer index."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: jnp.float32(decay ** (num_layers + 1 - layer_of(path_names(p)))), params)
