"""MAS (Aljundi et al., ECCV 2018): EWC's quadratic penalty with a label-free importance.

Ω_i = mean over the step's examples of |∂ ‖f(x)‖²₂ / ∂θ_i|, f = the logits: how much the output
moves when a parameter moves, whatever the label. Everything else (online accumulation, the anchor,
budget accounting of the importance pass) is ``cljax.learners.ewc.penalty_learner``.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from cljax.learner import Learner
from cljax.learners.ewc import PENALTY_INPUTS, penalty_learner
from cljax.learners.registry import register


def output_sensitivity(apply: Callable, params: dict, x: jax.Array, y: jax.Array) -> dict:
  """MAS's importance of one example x [...]: |∂ ‖f(x)‖²₂ / ∂θ| (y is not used)."""
  del y
  g = jax.grad(lambda p: jnp.sum(apply(p, x[None]) ** 2))(params)
  return jax.tree.map(jnp.abs, g)


@register("mas", inputs=PENALTY_INPUTS)
def mas(*, num_classes: int, lam: float = 1.0, decay: float = 1.0,
        importance_passes: int = 16, model: str = "mlp",
        model_kwargs: Optional[dict] = None, optimizer: str = "adam", lr: float = 1e-3,
        momentum: float = 0.9, weight_decay: float = 0.0, batch_size: int = 32,
        epochs_per_step: float = 5.0, max_step_size: int = 4096, chunk: int = 8,
        init_params: Optional[dict] = None) -> Learner:
  """MAS: label-free importance mean |∂‖f(x)‖²/∂θ|, EWC's penalty form."""
  return penalty_learner(
      "mas", output_sensitivity, num_classes=num_classes, model=model, model_kwargs=model_kwargs,
      optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
      batch_size=batch_size, lam=lam, decay=decay, importance_passes=importance_passes,
      epochs_per_step=epochs_per_step, max_step_size=max_step_size, chunk=chunk,
      init_params=init_params)
