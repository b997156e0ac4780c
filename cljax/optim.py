"""Optimizers and learning-rate schedules (optax), the one place every learner builds them.

* ``direction(name, ...)``: an optimizer without its learning rate (a ``GradientTransformation``
  whose updates are to be multiplied by ``-lr``). Learners whose lr changes per step inside jit
  (REMIND's per-class schedule, DietCL's per-layer half-cosine) scale it themselves.
* ``build(name, lr, ...)``: the optimizer with its learning rate (a float or an optax schedule).

``sgd`` and ``adam`` add weight decay to the gradient (PyTorch's ``weight_decay``, L2); ``adamw``
decays the weights directly (decoupled). Decay applies where ``decay_mask(params)`` is True:
by default everything but batch-norm running statistics (``not_stats``), which are not weights.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from cljax.models.pure import path_names

OPTIMIZERS = ("sgd", "adam", "adamw")
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
              betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
              decay_mask: Callable = not_stats) -> optax.GradientTransformation:
  """Optimizer ``name`` (one of ``OPTIMIZERS``) without the learning rate.

  sgd: d = momentum·d + g + wd·θ (torch order: decay then momentum); adam: Adam moments of
  g + wd·θ; adamw: Adam moments of g, plus wd·θ decoupled. Multiply the updates by -lr.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; valid: {list(OPTIMIZERS)}")
  decay = optax.masked(optax.add_decayed_weights(weight_decay), decay_mask)
  if name == "sgd":
    return optax.chain(decay, optax.trace(decay=momentum) if momentum else optax.identity())
  if name == "adam":
    return optax.chain(decay, optax.scale_by_adam(*betas, eps=eps))
  return optax.chain(optax.scale_by_adam(*betas, eps=eps), decay)


def build(name: str, lr, *, momentum: float = 0.9, weight_decay: float = 0.0,
          betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
          decay_mask: Callable = not_stats) -> optax.GradientTransformation:
  """``direction(name, ...)`` followed by the learning rate ``lr`` (float or optax schedule)."""
  return optax.chain(direction(name, momentum=momentum, weight_decay=weight_decay, betas=betas,
                               eps=eps, decay_mask=decay_mask),
                     optax.scale_by_learning_rate(lr))


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
