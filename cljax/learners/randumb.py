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
``gamma="scale"`` (1 / (d · Var X) over the training matrix) is estimated from the stream's first
``gamma_rows`` examples (default 256), the data a streaming learner has when it must fix its
embedding: ``update`` keeps those raw rows in a fixed-size warm-up buffer, and when it fills, fixes
γ from them, embeds them and streams them into the head; later rows go straight to the head.
Until then ``predict`` and ``end_of_step`` use γ and the head of the rows buffered so far (the same
thing the buffer will give, on fewer rows). γ from ``init``'s example batch alone was the earlier
rule: with one example per update that is one image, and on Fashion-MNIST seed 2 it gave γ 4.5x
the training set's and 6 points less accuracy (notes/baselines.md). ``gamma`` may be given as a
float instead (no warm-up). ``experiments/studies/randumb.py`` measures both differences against
the reference estimator on the same embedding.

Paper settings: D up to 25,000 (``embed_dim``; the default), raw pixels (optionally flip
augmentation), one pass. D x D statistics make the update 2·D² FLOPs per example and the state
4·D² bytes (2.5 GB at 25,000): run small D on a CPU.

The learner state is a :class:`State`.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from cljax import learner as contract
from cljax.learner import Learner
from cljax.learners.registry import register
from cljax.models.pure import Net
from cljax.ops import slda as lda

EMBEDDINGS = ("random_fourier", "random_relu")


class Warmup(NamedTuple):
  """The stream's first rows, kept raw until γ = "scale" is fixed from them (n_w = ``gamma_rows``).

  x: [n_w, ...] float32 inputs (the backbone's features when there is one), in stream order.
  y: [n_w] int32 their labels.
  n: [] int32 rows buffered so far (at most n_w; n_w once γ is fixed).
  """

  x: jax.Array
  y: jax.Array
  n: jax.Array


class State(NamedTuple):
  """RanDumb's learner state (K classes, D random features).

  embed: the embedding network's parameters (``cljax.models.pure.Net`` pure dict of
    ``random_fourier``/``random_relu``: the fixed random matrices, and the Fourier features' γ
    under ``"gamma"``, [] float32; its unused linear head too).
  lda: the head's statistics, ``cljax.ops.slda.SLDAState`` (means [K, D], pooled scatter
    [D, D], counts, cached W and b).
  warm: the warm-up buffer (:class:`Warmup`) with ``gamma="scale"`` Fourier features, else None.
  """

  embed: dict
  lda: lda.SLDAState
  warm: Optional[Warmup] = None


def scale_gamma(x) -> float:
  """scikit-learn's ``gamma="scale"``: 1 / (d · Var(x)) over every entry of x [N, ...] (1 when the
  variance is 0)."""
  x = np.asarray(x, np.float64).reshape(np.shape(x)[0], -1)
  var = float(x.var())
  return 1.0 / (x.shape[1] * var) if var > 0 else 1.0


def scale_gamma_masked(x: jax.Array, valid: jax.Array) -> jax.Array:
  """``scale_gamma`` of the rows of x [N, ...] where valid [N] (bool) holds, traced (float32
  scalar; 1 when there are none or their variance is 0)."""
  x = x.reshape(x.shape[0], -1).astype(jnp.float32)
  w = valid.astype(jnp.float32)[:, None]
  n = jnp.maximum(jnp.sum(w) * x.shape[1], 1.0)
  mean = jnp.sum(x * w) / n
  var = jnp.sum(jnp.square(x - mean) * w) / n
  return jnp.where(var > 0, 1.0 / (x.shape[1] * jnp.where(var > 0, var, 1.0)), 1.0)


def inputs(x: jax.Array, backbone: Optional[Callable]) -> jax.Array:
  """x [B, ...] as float32, or the backbone's features of it."""
  x = jnp.asarray(x, jnp.float32)
  return x if backbone is None else backbone(x).astype(jnp.float32)


def init_state(key: jax.Array, example_batch, *, net: Net, backbone: Optional[Callable],
               num_classes: int, embed_dim: int, gamma: Union[str, float],
               warm_rows: int) -> State:
  """A fresh :class:`State`; ``warm_rows`` > 0 gives it a warm-up buffer of that many rows."""
  x = inputs(example_batch["x"], backbone)
  params = net.init(key, x.shape[1:])  # its linear head stays unused: LDA classifies
  if "gamma" in params:  # random_fourier
    g = scale_gamma(x) if gamma == "scale" else float(gamma)  # provisional while warming up
    params["gamma"] = jnp.asarray(g, jnp.float32)
  warm = None
  if warm_rows:
    warm = Warmup(x=jnp.zeros((warm_rows,) + x.shape[1:], jnp.float32),
                  y=jnp.zeros((warm_rows,), jnp.int32), n=jnp.zeros((), jnp.int32))
  return State(embed=params, lda=lda.init_state(num_classes, embed_dim), warm=warm)


def from_buffer(state: State, *, net: Net) -> tuple:
  """(embedding params, head stats) of the warm-up rows buffered so far: γ from them, their
  statistics streamed from empty."""
  w = state.warm
  valid = jnp.arange(w.y.shape[0]) < w.n
  params = {**state.embed, "gamma": scale_gamma_masked(w.x, valid)}
  # The rows are stored after the backbone: embedded as they are.
  stats = lda.update_batch(lda.init_state(*state.lda.means.shape), net.features(params, w.x),
                           w.y, valid, rule="pooled")
  return params, stats


def settled(state: State, *, net: Net) -> tuple:
  """(embedding params, head stats) to predict with: the state's once γ is fixed, otherwise
  those of the warm-up buffer."""
  if state.warm is None:
    return state.embed, state.lda
  return lax.cond(state.warm.n >= state.warm.y.shape[0], lambda s: (s.embed, s.lda),
                  functools.partial(from_buffer, net=net), state)


def update(state: State, batch, key, *, net: Net, backbone: Optional[Callable]) -> tuple:
  """RanDumb's ``update``: the valid, labelled rows streamed into the head, the first ones
  through the warm-up buffer when there is one."""
  del key
  _, use = contract.masks(batch)
  x = inputs(batch["x"], backbone)
  y = jnp.asarray(batch["y"], jnp.int32)
  info = contract.info(examples=jnp.sum(use).astype(jnp.int32))
  if state.warm is None:
    stats = lda.update_batch(state.lda, net.features(state.embed, x), y, use, rule="pooled")
    return state._replace(lda=stats), info
  w = state.warm
  n_warm = w.y.shape[0]
  # Stream position of each used row; the first n_warm go to the buffer, the rest to the head.
  pos = w.n + jnp.cumsum(use.astype(jnp.int32)) - 1
  to_buf = use & (pos < n_warm)
  slot = jnp.where(to_buf, pos, n_warm)  # n_warm: out of range, dropped
  n = jnp.minimum(w.n + jnp.sum(use).astype(jnp.int32), n_warm)
  fills = (w.n < n_warm) & (n >= n_warm)  # this batch completes the buffer
  state = state._replace(warm=Warmup(x=w.x.at[slot].set(x.astype(jnp.float32), mode="drop"),
                                     y=w.y.at[slot].set(y, mode="drop"), n=n))
  # The batch that fills the buffer fixes γ and streams the buffered rows into the head.
  params, stats = lax.cond(fills, functools.partial(from_buffer, net=net),
                           lambda s: (s.embed, s.lda), state)
  stats = lda.update_batch(stats, net.features(params, x), y, use & (pos >= n_warm),
                           rule="pooled")
  return state._replace(embed=params, lda=stats), info


def refresh(state: State) -> State:
  """The cached LDA head recomputed (OAS-shrunk pooled covariance)."""
  return state._replace(lda=lda.refresh(state.lda, "oas"))


def predict(state: State, x, *, net: Net, backbone: Optional[Callable],
            priors: bool) -> jax.Array:
  """Scores [B, K]: the LDA head on φ(x), plus log class priors if ``priors``; unseen classes
  score −inf."""
  params, stats = settled(state, net=net)
  s = lda.scores(stats, net.features(params, inputs(x, backbone)), "oas", "cholesky",
                 mask_unseen=True)
  if priors:
    counts = stats.counts.astype(jnp.float32)
    s = s + jnp.log(jnp.maximum(counts, 1.0) / jnp.maximum(counts.sum(), 1.0))
  return s


@register("randumb", inputs=("backbone",))
def randumb(*, num_classes: int, embedding: str = "random_fourier", embed_dim: int = 25000,
            gamma: Union[str, float] = "scale", gamma_rows: int = 256, priors: bool = True,
            backbone: Optional[Callable] = None, donate: bool = False) -> Learner:
  """Builds RanDumb (see the module docstring).

  Args:
    num_classes: K (unseen classes score −inf).
    embedding: ``random_fourier`` (RanDumb) or ``random_relu`` (RanPAC's projection).
    embed_dim: D, the number of random features (paper: up to 25,000).
    gamma: γ of the Fourier features: ``"scale"`` (1 / (d · Var) of the stream's first
      ``gamma_rows`` examples) or a float. Ignored by ``random_relu``.
    gamma_rows: examples buffered (raw) before γ = "scale" is fixed (module docstring).
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
  if int(gamma_rows) < 2:
    raise ValueError(f"gamma_rows must be >= 2 (rows that estimate gamma='scale'), got "
                     f"{gamma_rows}")
  warm = embedding == "random_fourier" and gamma == "scale"
  net = Net.named(embedding, num_classes, dim=int(embed_dim))
  init = functools.partial(init_state, net=net, backbone=backbone, num_classes=num_classes,
                           embed_dim=int(embed_dim), gamma=gamma,
                           warm_rows=int(gamma_rows) if warm else 0)
  refresh_jit = jax.jit(refresh)

  def end_of_step(state, key, budget=None, progress=None):
    """Refreshes the cached head (no training: 0 passes, whatever the budget)."""
    del key, budget, progress
    return refresh_jit(state), contract.info()

  return Learner(
      "randumb", init,
      jax.jit(functools.partial(update, net=net, backbone=backbone),
              donate_argnums=(0,) if donate else ()),
      end_of_step,
      jax.jit(functools.partial(predict, net=net, backbone=backbone, priors=priors)))
