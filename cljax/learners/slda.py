"""Deep SLDA: a streaming LDA head on frozen features (Hayes and Kanan, CVPR-W 2020).

    learner = cljax.learners.get("slda", num_classes=1000)
    state = learner.init(key, example_batch)
    state = fit_base(state, x_base, y_base)                 # optional base initialization (OAS)
    state, metrics = learner.update(state, batch, key)      # jit; no backward pass
    state, _ = learner.end_of_step(state, key, budget)      # refreshes the cached head
    logits = learner.predict(state, x)                      # jit; [B, K]

Base initialisation as the reference runs it (tyler-hayes/Deep_SLDA ``experiment.py`` lines
103-129: the first class increment is collected whole and given to ``fit_base``, class means plus
an OAS-shrunk covariance, ``SLDA_Model.py`` lines 116-137; the later increments are streamed one
example at a time through ``fit``, ``experiment.py`` lines 130-145 and ``SLDA_Model.py`` lines
41-70): pass ``base`` (a
``cljax.train.pretrain.BaseInit``, which experiments hand every learner that declares it) and
``init`` fits its labelled base set through the backbone. Experiments also stream the base set
as the stream's first time step; with ``skip_base_step`` (default) the state ignores updates until
the first ``end_of_step``, so the base set is counted once, as in the reference.

The state is :class:`cljax.ops.slda.SLDAState` (statistics plus the cached head W, b). Updates
mark the head stale; ``end_of_step`` (or ``refresh_on_update=True``) recomputes it, and
``predict`` solves on the fly while it is stale, so predictions are correct at any point and
cheap once refreshed. See ``cljax/ops/slda.py`` for the equations and the update rules.

Inputs: without a backbone, ``batch["x"]`` [B, ...] is flattened to features [B, d]. With
``backbone`` (a pure callable x -> [B, d], frozen, parameters closed over, inference mode) the
backbone runs inside the jitted update and predict. Rows with ``valid`` or ``labeled`` False are
skipped, and so are rows whose label lies outside [0, num_classes) (counted in the
``ignored`` metric: a jitted update cannot raise on values).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cljax import learner as contract
from cljax.learner import Learner
from cljax.learners.registry import register
from cljax.ops import analytic
from cljax.ops import sharding
from cljax.ops import slda as ops

COVARIANCES = ("plastic", "fixed")


def _check_dim(state: ops.SLDAState, feats: jax.Array, where: str):
  # Shapes are static, so this raises at trace time and costs nothing per call.
  d = state.means.shape[1]
  if feats.shape[1] != d:
    raise ValueError(f"slda.{where}: batch['x'] gives features of dim {feats.shape[1]}, "
                     f"but the state has feature_dim={d}")


def base_features(x, features: Callable, rows: int = 256) -> np.ndarray:
  """[N, d] features of base inputs x [N, ...] by the jitted ``features``, ``rows`` at a time (the
  last block padded, so one compiled program serves every block)."""
  x = np.asarray(x)
  out = []
  for s in range(0, len(x), rows):
    blk = x[s:s + rows]
    pad = rows - len(blk)
    if pad:
      blk = np.concatenate([blk, np.zeros((pad, *blk.shape[1:]), blk.dtype)])
    out.append(np.asarray(features(jnp.asarray(blk)))[:rows - pad])
  return np.concatenate(out)


def ingest(state: ops.SLDAState, batch, *, backbone: Optional[Callable], update_rule: str,
           plastic: bool, refresh_on_update: bool, shrinkage: float,
           solver: str) -> ops.SLDAState:
  """The statistics after the batch's valid, labelled rows (and the head refreshed if
  ``refresh_on_update``)."""
  feats = analytic.features(batch["x"], backbone)  # split over the devices with the batch
  _check_dim(state, feats, "update")
  _, mask = contract.masks(batch)
  # The statistics of the whole batch are applied on every device alike, from its gathered
  # features (B x d floats): sums split over the devices would round differently with each
  # device count, and a run on N devices or processes equals the one-device run exactly.
  feats, y, mask = sharding.replicate((feats, batch["y"], mask))
  state = ops.update_batch(state, feats, y, mask, rule=update_rule, plastic=plastic)
  if refresh_on_update:
    state = ops.refresh(state, shrinkage, solver)
  return state


def update(state: ops.SLDAState, batch, key, *, num_classes: int,
           ingest: Callable) -> tuple:
  """SLDA's ``update``: ``ingest`` (settings bound) unless the state is skipping a base step."""
  del key
  y = batch["y"]
  _, mask = contract.masks(batch)
  in_range = (y >= 0) & (y < num_classes)
  # The base set's own time step (skip): the state stays as fit_base left it.
  state = jax.lax.cond(state.skip, lambda s: s, lambda s: ingest(s, batch), state)
  used = mask & ~state.skip
  return state, contract.info(examples=(used & in_range).sum().astype(jnp.int32),
                              ignored=(used & ~in_range).sum().astype(jnp.int32),
                              skipped=(mask & state.skip).sum().astype(jnp.int32))


def predict(state: ops.SLDAState, x, *, backbone: Optional[Callable], shrinkage: float,
            solver: str, mask_unseen: bool) -> jax.Array:
  """Scores [B, K] of the LDA head (solved on the fly while the cached head is stale)."""
  feats = analytic.features(x, backbone)
  _check_dim(state, feats, "predict")
  return ops.scores(state, feats, shrinkage, solver, mask_unseen)


def refresh(state: ops.SLDAState, *, shrinkage: float, solver: str) -> ops.SLDAState:
  """The cached head recomputed, and a base step's skipping ended."""
  return ops.refresh(state, shrinkage, solver)._replace(skip=jnp.zeros((), jnp.bool_))


@register("slda", inputs=("backbone", "base"))
def slda(*, num_classes: int,
         shrinkage: float = 1e-4,
         covariance: str = "plastic",
         update_rule: str = "reference",
         solver: str = "cholesky",
         mask_unseen: bool = True,
         backbone: Optional[Callable] = None,
         refresh_on_update: bool = False,
         donate: bool = False,
         base=None,
         skip_base_step: bool = True) -> Learner:
  """Builds the Deep SLDA learner.

  Args:
    num_classes: K, fixed maximum number of classes. The feature dimension d comes from
      ``init``'s example batch (flattened inputs, or the backbone's output).
    shrinkage: ε in Λ = ((1−ε)Σ + εI)⁻¹.
    covariance: "plastic" (Σ streams) or "fixed" (Σ only from the base initialisation, ``base``
      or :func:`fit_base`; means stream). Fixed without a base initialisation leaves Σ = 0, and
      the head is then a Euclidean nearest-class-mean classifier.
    update_rule: "reference" (Deep SLDA / Avalanche, global-count weight) or "pooled" (exact
      within-class covariance, order-invariant, mergeable).
    solver: "cholesky" (default) or "pinv" (the reference's pseudo-inverse).
    mask_unseen: unseen classes score −inf (default) instead of the reference's plain formula.
    backbone: optional frozen feature extractor x [B, ...] -> [B, d], applied inside jit.
    refresh_on_update: recompute the cached head at the end of every update (costs a Cholesky and
      a K-column solve per batch) instead of at ``end_of_step``/lazily in ``predict``.
    donate: donate the state to ``update`` so the statistics are updated in place (measured
      1.2–1.8x faster at d=512, K=1000 on CPU, see notes/slda.md); the state passed in is then
      invalid, so callers must not keep it (e.g. for an async checkpoint in flight).
    base: optional base initialisation: anything with ``x`` [N, ...] inputs and ``y`` [N] labels
      (>= 0; an unlabeled MAE base set is refused) and, when ``backbone`` is None, a
      ``backbone()`` method returning the frozen feature function (``BaseInit`` has all three).
      ``init`` then fits the statistics to the base set (:func:`fit_base`: means, counts, OAS Σ).
    skip_base_step: with ``base``: True (default) when the stream's first time step *is* the base
      set (experiments with ``base_init.classes > 0`` stream it to every learner): updates are
      ignored until the first ``end_of_step``, so it is not counted twice. False when the stream
      does not contain the base set (e.g. a base set from another source). Ignored without base.
  """
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"slda: num_classes must be a positive int, got {num_classes!r}")
  if covariance not in COVARIANCES:
    raise ValueError(f"slda: covariance must be one of {COVARIANCES}, got {covariance!r}")
  if update_rule not in ops.RULES:
    raise ValueError(f"slda: update_rule must be one of {ops.RULES}, got {update_rule!r}")
  if solver not in ops.SOLVERS:
    raise ValueError(f"slda: solver must be one of {ops.SOLVERS}, got {solver!r}")
  if not 0.0 <= float(shrinkage) <= 1.0:
    raise ValueError(f"slda: shrinkage must lie in [0, 1], got {shrinkage!r}")
  shrinkage = float(shrinkage)
  if base is not None:
    base_y = np.asarray(base.y)
    if len(base_y) == 0 or (base_y < 0).any():
      raise ValueError("slda: the base set must be non-empty and labelled (fit_base needs class "
                       "means); got an empty or unlabeled (e.g. mae) base initialisation")
    if backbone is None:
      backbone = base.backbone()
  features_jit = jax.jit(functools.partial(analytic.features, backbone=backbone))

  def init(key, example_batch):
    del key
    d = analytic.feature_dim(example_batch["x"], backbone)
    if base is None:
      return ops.init_state(num_classes, d)
    state = fit_base(ops.init_state(num_classes, d), base_features(base.x, features_jit), base.y)
    return state._replace(skip=jnp.asarray(bool(skip_base_step)))

  refresh_jit = jax.jit(functools.partial(refresh, shrinkage=shrinkage, solver=solver))

  def end_of_step(state, key, budget=None, progress=None):
    """Refreshes the cached head and ends a base step's skipping (0 passes, whatever the
    budget)."""
    del key, budget, progress
    return refresh_jit(state), contract.info()

  step = functools.partial(ingest, backbone=backbone, update_rule=update_rule,
                           plastic=covariance == "plastic", refresh_on_update=refresh_on_update,
                           shrinkage=shrinkage, solver=solver)
  return Learner(
      "slda", init,
      jax.jit(functools.partial(update, num_classes=num_classes, ingest=step),
              donate_argnums=(0,) if donate else ()),
      end_of_step,
      jax.jit(functools.partial(predict, backbone=backbone, shrinkage=shrinkage, solver=solver,
                                mask_unseen=mask_unseen)))


def fit_base(state: ops.SLDAState,
             x,
             y,
             *,
             valid=None,
             backbone: Optional[Callable] = None,
             shrink: bool = True) -> ops.SLDAState:
  """Base initialization: replaces the statistics in ``state`` with those of (x, y).

  Per-class means and counts, n = N and Σ = OAS estimate (sklearn ``OAS(assume_centered=True)``)
  of the residuals x − μ_y, as the reference does (tyler-hayes/Deep_SLDA ``SLDA_Model.py``
  lines 116-137, ``fit_base``: ``OAS(assume_centered=True)`` fitted on ``X - muK[y]``).
  Everything streamed into ``state`` before is discarded (``skip`` too); its shapes (K, d) are
  kept and checked.

  Args:
    state: a state from ``learner.init`` (gives K and d).
    x: [N, ...] inputs (features [N, d] when ``backbone`` is None, else backbone inputs; pass the
      learner's backbone again, it is not stored in the state).
    y: [N] int labels in [0, K).
    valid: optional [N] bool of rows to use.
    backbone: optional feature extractor, as in the learner.
    shrink: False uses the plain within-class covariance instead of OAS.

  Raises:
    ValueError: on a feature-dimension mismatch, labels out of range or wrong shapes.
  """
  k, d = state.means.shape
  feats = analytic.features(jnp.asarray(x), backbone)
  if feats.shape[1] != d:
    raise ValueError(f"slda.fit_base: x gives features of dim {feats.shape[1]}, but the state has "
                     f"feature_dim={d}")
  return ops.fit_base_checked(feats, y, k, valid, shrink=shrink)
