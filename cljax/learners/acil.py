"""ACIL: analytic class-incremental learning (Zhuang et al., "ACIL: Analytic Class-Incremental
Learning with Absolute Memorization and Privacy Protection", NeurIPS 2022; the batched recursion
of G-ACIL, Zhuang et al. 2024; reference ZHUANGHP/Analytic-continual-learning).

    learner = cljax.learners.get("acil", num_classes=10, expansion_dim=8192, ridge=0.1)
    state, _ = learner.update(state, batch, key)    # jit; recursive least squares, no backward
    logits = learner.predict(state, x)              # [B, K]

On frozen features x [B, d] (a backbone's, or the flattened inputs):

1. optional random expansion ("buffer layer") h = ReLU(x W_e), W_e [d, D] fixed, drawn from
   ``torch.nn.Linear``'s default U(−1/√d, 1/√d) as the reference's ``RandomBuffer`` does
   (``analytic/Buffer.py`` lines 37-68); ``expansion_dim`` = D (reference default 8192,
   ``config.py`` ``--buffer-size``); 0 uses x itself (D = d).
2. recursive least squares on one-hot targets, no intercept, ridge γ (``ridge``, the reference's
   ``--gamma`` default 0.1): with R = (HᵀH + γI)⁻¹ [D, D] and W [D, K], each block of rows
   updates ``K = (I + H R Hᵀ)⁻¹, R ← R − R Hᵀ K H R, W ← W + R Hᵀ (Y − H W)``
   (``analytic/AnalyticLinear.py`` lines 106-134, ``RecursiveLinear.fit``, ACIL eqs. 9-10;
   ``cljax.ops.analytic.rls_update``).

After any stream, whatever its batch sizes and order, W equals the joint ridge solution
W = (HᵀH + γI)⁻¹ HᵀY of every row seen: "absolute memorization", the property that makes the
class-incremental learner equal to joint training (up to float32 rounding here; the reference
runs in float64, which jax enables only globally). Scores are H W; classes never seen score −inf
(the reference's head only has columns for the classes seen so far).

Differences from the reference, on purpose: the backbone is frozen from the start (the reference
first trains it by backprop on the base classes, ``ACIL.py`` ``base_training``; here that is the
experiment's base initialisation or a pretrained network), and the per-block K is a Cholesky
solve rather than ``torch.inverse``.

On a mesh the batch's expanded features are gathered and the update applied alike on every
device (as SLDA), so N devices give the one-device state; two states over disjoint rows merge
exactly with ``cljax.ops.analytic.rls_merge``. Cost: about 4·D²·B FLOPs per batch of B rows (the
[D, D] products), 4·D² bytes of state (268 MB at D = 8192).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from cljax import learner as contract
from cljax.learner import Learner
from cljax.learners.registry import register
from cljax.ops import analytic
from cljax.ops import sharding


class State(NamedTuple):
  """ACIL's state (K classes, D expanded features).

  projection: [d, D] float32 fixed random expansion, or None (``expansion_dim`` = 0).
  r: [D, D] float32 R = (HᵀH + γI)⁻¹ of every row so far (I/γ at the start).
  weights: [D, K] float32 W = R HᵀY, the ridge solution.
  counts: [K] int32 examples of each class (unseen classes score −inf).
  """

  projection: Optional[jax.Array]
  r: jax.Array
  weights: jax.Array
  counts: jax.Array


def update(state: State, batch, key, *, backbone: Optional[Callable]) -> tuple:
  """One RLS block over the batch's valid, labelled rows (``cljax.ops.analytic.rls_update``)."""
  del key
  x = analytic.features(batch["x"], backbone)
  d = state.r.shape[0] if state.projection is None else state.projection.shape[0]
  if x.shape[1] != d:
    raise ValueError(f"acil.update: batch['x'] gives features of dim {x.shape[1]}, but the "
                     f"state expects {d}")
  _, mask = contract.masks(batch)
  # Applied whole on every device (as SLDA): N devices give the one-device state.
  x, y, mask = sharding.replicate((x, batch["y"], mask))
  h = analytic.expand(x, state.projection)
  r, w = analytic.rls_update(state.r, state.weights, h, y, mask)
  onehot, _ = analytic.masked_targets(y, mask, w.shape[1])
  counts = state.counts + onehot.sum(0).astype(jnp.int32)
  return (state._replace(r=r, weights=w, counts=counts),
          contract.info(examples=(counts - state.counts).sum()))


def predict(state: State, x, *, backbone: Optional[Callable]) -> jax.Array:
  """Scores [B, K] = H W, −inf for classes never seen."""
  h = analytic.expand(analytic.features(x, backbone), state.projection)
  s = jnp.dot(h, state.weights, precision=jax.lax.Precision.HIGHEST)
  return jnp.where(state.counts > 0, s, -jnp.inf)


@register("acil", inputs=("backbone",))
def acil(*, num_classes: int, expansion_dim: int = 8192, ridge: float = 0.1,
         backbone: Optional[Callable] = None, donate: bool = False) -> Learner:
  """Builds ACIL (module docstring).

  Args:
    num_classes: K.
    expansion_dim: D, ReLU random features of the frozen features (0: none, D = d).
    ridge: γ > 0 of the ridge regression (R starts at I/γ).
    backbone: optional frozen feature extractor x [B, ...] -> [B, d], applied inside jit.
    donate: donate the state to ``update`` (R is updated in place; the caller must not keep the
      state passed in).
  """
  if int(expansion_dim) < 0:
    raise ValueError(f"acil: expansion_dim must be >= 0 (0: no expansion), got {expansion_dim}")
  if not float(ridge) > 0:
    raise ValueError(f"acil: ridge must be > 0, got {ridge!r}")
  gamma = float(ridge)

  def init(key, example_batch):
    d = analytic.feature_dim(example_batch["x"], backbone)
    proj = None
    if int(expansion_dim):
      proj = analytic.projection(key, d, int(expansion_dim), "uniform")
    dim = int(expansion_dim) or d
    return State(proj, jnp.eye(dim, dtype=jnp.float32) / gamma,
                 jnp.zeros((dim, num_classes), jnp.float32),
                 jnp.zeros((num_classes,), jnp.int32))

  return Learner("acil", init,
                 jax.jit(functools.partial(update, backbone=backbone),
                         donate_argnums=(0,) if donate else ()),
                 contract.identity_end_of_step,
                 jax.jit(functools.partial(predict, backbone=backbone)))
