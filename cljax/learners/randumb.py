"""RanDumb (Prabhu, Sinha, Kumaraguru, Torr, Sener, Dokania 2024, "RanDumb: A Simple Approach that
Questions the Efficacy of Continual Representation Learning"; drimpossible/RanDumb).

A fixed random embedding of the raw inputs and a streaming linear discriminant head; nothing is
trained by gradient descent:

* embedding (``cljax/models/random_features.py``): ``random_fourier``, random Fourier features
  ``φ(x) = √(2/D) cos(x W + b)``, W ~ N(0, 2γ), b ~ U(0, 2π) (scikit-learn's
  ``RBFSampler(gamma="scale")``, ``src/main.py`` lines 76-80 of the reference), or
  ``random_relu``, RanPAC's ``max(0, x W)``, W ~ N(0, 1) (lines 72-75);
* head: class means and the pooled within-class covariance of φ(x), streamed exactly
  (``cljax.ops.slda.update_batch(rule="pooled")``: the scatter after any stream equals the
  offline ``Σ_k Σ_{i∈k} (φ_i − μ_k)(φ_i − μ_k)ᵀ`` up to rounding, whatever the batch size), then
  OAS shrinkage of that covariance (``cljax.ops.slda.oas_shrink``; the shrinkage is a function of
  the empirical covariance and the count only) inverted without a ridge, and scores
  ``φ W + b + log π`` with W = Σ⁻¹ Mᵀ, b_k = −½ μ_kᵀ Σ⁻¹ μ_k and the class priors π (scikit-learn's
  ``LinearDiscriminantAnalysis``, which the reference uses).

The reference fits ``LinearDiscriminantAnalysis(solver="lsqr", covariance_estimator=OAS())``
offline, on the whole training set at once, because a one-example-at-a-time update was too slow
(its README). Two differences, both deliberate: scikit-learn shrinks each class's covariance with
its own OAS and averages them by the priors, which needs K covariances of D x D (25 GB at D =
25,000, K = 10) and cannot stream cheaply; here the pooled covariance is shrunk once. And
``gamma="scale"`` (1 / (d · Var X) over the training matrix) is estimated from ``init``'s
example batch, the data a streaming learner has when it must fix its embedding (``gamma`` may be
given as a float instead). ``experiments/studies/randumb.py`` measures both against the reference
estimator on the same embedding.

Paper settings: D up to 25,000 (``embed_dim``; the default), raw pixels (optionally flip
augmentation), one pass. D x D statistics make the update 2·D² FLOPs per example and the state
4·D² bytes (2.5 GB at 25,000): run small D on a CPU.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from cljax import learner as contract
from cljax.learner import Learner
from cljax.learners.registry import register
from cljax.models.pure import Net
from cljax.ops import slda as lda

EMBEDDINGS = ("random_fourier", "random_relu")


def scale_gamma(x) -> float:
  """scikit-learn's ``gamma="scale"``: 1 / (d · Var(x)) over every entry of x [N, ...] (1 when the
  variance is 0)."""
  x = np.asarray(x, np.float64).reshape(np.shape(x)[0], -1)
  var = float(x.var())
  return 1.0 / (x.shape[1] * var) if var > 0 else 1.0


@register("randumb", inputs=("backbone",))
def randumb(*, num_classes: int, embedding: str = "random_fourier", embed_dim: int = 25000,
            gamma: Union[str, float] = "scale", priors: bool = True,
            backbone: Optional[Callable] = None, donate: bool = False) -> Learner:
  """Builds RanDumb (see the module docstring).

  Args:
    num_classes: K (unseen classes score −inf).
    embedding: ``random_fourier`` (RanDumb) or ``random_relu`` (RanPAC's projection).
    embed_dim: D, the number of random features (paper: up to 25,000).
    gamma: γ of the Fourier features: ``"scale"`` (1 / (d · Var) of init's example batch) or a
      float. Ignored by ``random_relu``.
    priors: add log class priors (counts / n) to the scores, as scikit-learn's LDA does.
    backbone: optional frozen feature extractor x [B, ...] -> [B, d]; the embedding then applies
      to its features (RanDumb on pretrained-ViT features). Without it: raw inputs, flattened.
    donate: donate the state to ``update`` (the D x D scatter is updated in place; callers must
      not keep the state passed in, e.g. for an asynchronous checkpoint).
  """
  if embedding not in EMBEDDINGS:
    raise ValueError(f"unknown embedding {embedding!r}; valid: {list(EMBEDDINGS)}")
  if int(embed_dim) < 1:
    raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
  if not (gamma == "scale" or (isinstance(gamma, (int, float)) and not isinstance(gamma, bool)
                               and gamma > 0)):
    raise ValueError(f"gamma must be 'scale' or a float > 0, got {gamma!r}")
  net = Net.named(embedding, num_classes, dim=int(embed_dim))

  def inputs(x):
    x = jnp.asarray(x, jnp.float32)
    return x if backbone is None else backbone(x).astype(jnp.float32)

  def embed(params, x):
    """φ(x) [B, D] of inputs x [B, ...]."""
    return net.features(params, inputs(x))

  def init(key, example_batch):
    x = inputs(example_batch["x"])
    params = net.init(key, x.shape[1:])  # its linear head stays unused: LDA classifies
    if embedding == "random_fourier":
      g = scale_gamma(x) if gamma == "scale" else float(gamma)
      params["gamma"] = jnp.asarray(g, jnp.float32)
    return {"embed": params, "lda": lda.init_state(num_classes, int(embed_dim))}

  @functools.partial(jax.jit, donate_argnums=(0,) if donate else ())
  def update(state, batch, key):
    del key
    _, use = contract.masks(batch)
    stats = lda.update_batch(state["lda"], embed(state["embed"], batch["x"]), batch["y"], use,
                             rule="pooled")
    return {**state, "lda": stats}, contract.info(examples=jnp.sum(use).astype(jnp.int32))

  refresh = jax.jit(lambda state: {**state, "lda": lda.refresh(state["lda"], "oas")})

  def end_of_step(state, key, budget=None):
    """Refreshes the cached head (no training: 0 passes, whatever the budget)."""
    del key, budget
    return refresh(state), contract.info()

  @jax.jit
  def predict(state, x):
    stats = state["lda"]
    s = lda.scores(stats, embed(state["embed"], x), "oas", "cholesky", mask_unseen=True)
    if priors:
      counts = stats.counts.astype(jnp.float32)
      s = s + jnp.log(jnp.maximum(counts, 1.0) / jnp.maximum(counts.sum(), 1.0))
    return s

  hp = dict(num_classes=num_classes, embedding=embedding, embed_dim=int(embed_dim), gamma=gamma,
            priors=priors, backbone=backbone is not None, donate=donate)
  return Learner("randumb", init, update, end_of_step, predict, hp)
