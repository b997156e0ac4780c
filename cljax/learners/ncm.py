"""Nearest class mean on frozen features (Mensink et al., TPAMI 2013; SimpleCIL's prototype
classifier, Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models", IJCV 2024).

    learner = cljax.learners.get("ncm", num_classes=10, metric="cosine")
    state, _ = learner.update(state, batch, key)    # jit; sums and counts only
    logits = learner.predict(state, x)              # [B, K]

The state keeps, per class, the sum of its features and its count; the class mean (prototype)
is their ratio. Nothing is trained: an example is one row of a matrix product.

* ``metric="euclidean"`` (default): score −‖x − μ_k‖², so the top class is scikit-learn's
  ``NearestCentroid`` (euclidean metric, no shrinkage) prediction.
* ``metric="cosine"``: score cos(x, μ_k), SimpleCIL's prototype head: its ``replace_fc`` sets
  each class's weight to the mean embedding of the class (zhoudw-zdw/RevisitingCIL
  ``models/simplecil.py`` lines 27-50) and its ``CosineLinear`` compares L2-normalised input and
  weights (``utils/inc_net.py``, ``CosineLinear.forward``; the same head as RanPAC's
  ``inc_net.py`` lines 30-33 without random projection). SimpleCIL computes the prototypes once
  per task from the whole task; class sums streamed one example at a time give the same means.

Classes with no example score −inf. Rows with ``valid`` or ``labeled`` False, or a label outside
[0, K), are skipped. Sums over rows do not depend on batch sizes or order (up to float32
rounding), and on a mesh the batch's features are gathered and applied alike on every device, as
SLDA does, so N devices give the one-device statistics; two partial states over disjoint rows
merge by adding them (``cljax.ops.analytic.merge_sums``).

Inputs: without ``backbone``, ``batch["x"]`` [B, ...] is flattened to features [B, d]; with it (a
frozen x -> [B, d] function) the backbone runs inside the jitted update and predict.
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

METRICS = ("euclidean", "cosine")


class State(NamedTuple):
  """NCM's state (K classes, d features).

  sums: [K, d] float32 sum of each class's features.
  counts: [K] int32 examples of each class.
  """

  sums: jax.Array
  counts: jax.Array


def means(state: State) -> jax.Array:
  """[K, d] class means (0 for unseen classes)."""
  return state.sums / jnp.maximum(state.counts, 1)[:, None].astype(jnp.float32)


def update(state: State, batch, key, *, backbone: Optional[Callable]) -> tuple:
  """The batch's valid, labelled rows added to their classes' sums and counts."""
  del key
  feats = analytic.features(batch["x"], backbone)
  if feats.shape[1] != state.sums.shape[1]:
    raise ValueError(f"ncm.update: batch['x'] gives features of dim {feats.shape[1]}, but the "
                     f"state has feature_dim={state.sums.shape[1]}")
  _, mask = contract.masks(batch)
  # Applied whole on every device (as SLDA): N devices give the one-device sums.
  feats, y, mask = sharding.replicate((feats, batch["y"], mask))
  before = state.counts.sum()
  sums, counts = analytic.class_sums(state.sums, state.counts, feats, y, mask)
  return State(sums, counts), contract.info(examples=counts.sum() - before)


def scores(state: State, feats: jax.Array, metric: str) -> jax.Array:
  """[B, K] scores of features [B, d]: −‖x − μ_k‖² or cos(x, μ_k); −inf for unseen classes."""
  mu = means(state)
  hi = jax.lax.Precision.HIGHEST
  if metric == "euclidean":
    # ‖x‖² is the same for every class and is left out (it does not change the ranking).
    s = 2.0 * jnp.dot(feats, mu.T, precision=hi) - jnp.sum(mu * mu, axis=1)
  else:
    unit = lambda a: a / jnp.maximum(jnp.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    s = jnp.dot(unit(feats), unit(mu).T, precision=hi)
  return jnp.where(state.counts > 0, s, -jnp.inf)


def predict(state: State, x, *, backbone: Optional[Callable], metric: str) -> jax.Array:
  return scores(state, analytic.features(x, backbone), metric)


@register("ncm", inputs=("backbone",))
def ncm(*, num_classes: int, metric: str = "euclidean",
        backbone: Optional[Callable] = None) -> Learner:
  """Builds the nearest-class-mean learner (module docstring).

  Args:
    num_classes: K, fixed maximum number of classes.
    metric: "euclidean" (scikit-learn's ``NearestCentroid``) or "cosine" (SimpleCIL).
    backbone: optional frozen feature extractor x [B, ...] -> [B, d], applied inside jit.
  """
  if metric not in METRICS:
    raise ValueError(f"ncm: metric must be one of {METRICS}, got {metric!r}")

  def init(key, example_batch):
    del key
    d = analytic.feature_dim(example_batch["x"], backbone)
    return State(jnp.zeros((num_classes, d), jnp.float32), jnp.zeros((num_classes,), jnp.int32))

  return Learner("ncm", init, jax.jit(functools.partial(update, backbone=backbone)),
                 contract.identity_end_of_step,
                 jax.jit(functools.partial(predict, backbone=backbone, metric=metric)))
