"""RanDumb (Prabhu, Sinha, Kumaraguru, Torr, Sener, Dokania 2024, "RanDumb: A Simple Approach that
Questions the Efficacy of Continual Representation Learning"; drimpossible/RanDumb).

A fixed random embedding of the raw inputs and a streaming linear discriminant head; nothing is
trained by gradient descent:

* embedding (``cljax/models/random_features.py``): ``random_fourier``, random Fourier features
  ``φ(x) = √(2/D) cos(x W + b)``, W ~ N(0, 2γ), b ~ U(0, 2π) (scikit-learn's
  ``RBFSampler(gamma="scale")``, ``src/main.py`` lines 76-80 of the reference), or
  ``random_relu``, RanPAC's ``max(0, x W)``, W ~ N(0, 1) (lines 72-75);
* head (``covariance="per_class"``, the default): the reference's estimator exactly. The
  reference (drimpossible/RanDumb ``src/main.py`` at 14a51ee, lines 86-89) fits
  ``LinearDiscriminantAnalysis(solver="lsqr", covariance_estimator=OAS())``; scikit-learn's
  ``_class_cov`` (``sklearn/discriminant_analysis.py``) fits OAS to each class's rows separately
  (centred on the class mean, divided by its count c_k, shrinkage ρ_k from c_k) and averages the
  shrunk covariances by the priors π_k = c_k / n:
  ``Σ = Σ_k π_k ((1 − ρ_k) S_k / c_k + ρ_k (tr S_k / (c_k D)) I)``. The state therefore streams
  each class's scatter ``S_k = Σ_{i∈k} (φ_i − μ_k)(φ_i − μ_k)ᵀ`` exactly ([K, D, D]; a batch is
  merged per class by Chan et al.'s parallel formula, so any batching, and :func:`merge` of two
  disjoint streams, equals one pass up to rounding), and :func:`refresh` shrinks each class with
  ``cljax.ops.slda.oas_shrink`` and averages them. Scores ``φ W + b + log π`` with W = Σ⁻¹ Mᵀ,
  b_k = −½ μ_kᵀ Σ⁻¹ μ_k (scikit-learn's ``lsqr`` solver: ``lstsq(Σ, Mᵀ)``, the same solution for
  the positive definite Σ). Memory: 4·K·D² bytes of float32 scatter (168 MB at D = 2,048 and
  K = 10; 25 GB at D = 25,000), the update 2·(B + 1)·D² FLOPs per class present in a batch.
* head (``covariance="pooled"``, for large D or K): one pooled within-class scatter streamed
  exactly (``cljax.ops.slda.update_batch(rule="pooled")``), OAS-shrunk once
  (``cljax.ops.slda.oas_shrink`` with n = the total count). Memory 4·D² bytes (16 MB at D = 2,048,
  2.5 GB at 25,000), the update 2·B·D² FLOPs. A different estimator from scikit-learn's: 0.6
  points below it on mnist5k at D = 2,048 (notes/baselines.md); this was the only head before
  issue 23.

The reference fits offline, on the whole training set at once, because a one-example-at-a-time
update was too slow (its README). One deliberate difference: ``gamma="scale"`` (1 / (d · Var X)
over the training matrix) is estimated from the stream's first
``gamma_rows`` examples (default 256), the data a streaming learner has when it must fix its
embedding: ``update`` keeps those raw rows in a fixed-size warm-up buffer, and when it fills, fixes
γ from them, embeds them and streams them into the head; later rows go straight to the head.
Until then ``predict`` and ``end_of_step`` use γ and the head of the rows buffered so far (the same
thing the buffer will give, on fewer rows). γ from ``init``'s example batch alone was the earlier
rule: with one example per update that is one image, and on Fashion-MNIST seed 2 it gave γ 4.5x
the training set's and 6 points less accuracy (notes/baselines.md). ``gamma`` may be given as a
float instead (no warm-up). ``experiments/studies/randumb.py`` measures both differences against
the reference estimator on the same embedding.

Paper settings: D up to 25,000 (``embed_dim``; default 4,096 here), raw pixels (optionally flip
augmentation), one pass. D x D statistics make the update 2·D² FLOPs per example and the state
4·D² bytes per covariance (2.5 GB at 25,000; K of them per class): run small D on a CPU, and
``covariance="pooled"`` where K·D² floats do not fit.

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
COVARIANCES = ("per_class", "pooled")
PER_CLASS_MAX_BYTES = 4 * 2**30  # 4·K·D² above this: a one-line error pointing to "pooled"
_OUTER_ROWS = 4  # update_class_scatter sums outer products up to this many rows, else a dot


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
  lda: the head's statistics, ``cljax.ops.slda.SLDAState`` (means [K, D], counts, n, cached W
    [D, K] and b [K]; its pooled scatter [D, D] with ``covariance="pooled"``, an unused [1, 1]
    array with ``"per_class"``).
  warm: the warm-up buffer (:class:`Warmup`) with ``gamma="scale"`` Fourier features, else None.
  class_scatter: [K, D, D] float32 per-class scatters S_k with ``covariance="per_class"``, else
    None.
  """

  embed: dict
  lda: lda.SLDAState
  warm: Optional[Warmup] = None
  class_scatter: Optional[jax.Array] = None


def stream_stats(stats: lda.SLDAState, class_scatter: Optional[jax.Array], f: jax.Array,
                 y: jax.Array, use: jax.Array) -> tuple:
  """(stats, class_scatter) after the rows f [B, D] (labels y [B], rows where ``use`` [B] bool)
  are streamed in: means and counts always, then the pooled scatter (``class_scatter`` None) or
  each present class's scatter (:func:`update_class_scatter`)."""
  if class_scatter is None:
    return lda.update_batch(stats, f, y, use, rule="pooled"), None
  new = lda.update_batch(stats, f, y, use, rule="pooled", plastic=False)
  return new, update_class_scatter(class_scatter, stats.means, stats.counts, f, y, use)


def update_class_scatter(scatter: jax.Array, means: jax.Array, counts: jax.Array, f: jax.Array,
                         y: jax.Array, use: jax.Array) -> jax.Array:
  """Per-class scatters [K, D, D] after a batch, by Chan et al.'s exact parallel merge.

  For each class k present in the batch (rows where ``use``, label y in [0, K)), with the batch's
  count b_k, mean m_k and scatter ``Σ_{i∈k} (f_i − m_k)(f_i − m_k)ᵀ``, and the state's count c_k
  and mean μ_k (``means`` [K, D], ``counts`` [K] before the batch):
  ``S_k += batch scatter + (c_k b_k / (c_k + b_k)) δ δᵀ``, δ = m_k − μ_k. One [B + 1, D] product per
  slot of min(B, K) (fixed shapes): 2·(B + 1)·D² FLOPs each, a temporary of 4·min(B, K)·D² bytes,
  added in place into the S_k present.
  """
  k = scatter.shape[0]
  use = use & (y >= 0) & (y < k)
  mf = use.astype(jnp.float32)
  ys = jnp.where(use, y, 0).astype(jnp.int32)
  f = jnp.where(use[:, None], f.astype(jnp.float32), 0.0)  # padding may hold NaN/inf
  nb = jax.ops.segment_sum(mf, ys, k)                                   # [K]
  mb = jax.ops.segment_sum(f, ys, k) / jnp.maximum(nb, 1.0)[:, None]     # [K, D]
  ca = counts.astype(jnp.float32)
  coef = jnp.sqrt(ca * nb / jnp.maximum(ca + nb, 1.0))
  # The classes present, padded with k (out of range: their updates are dropped). One scatter-add
  # of [P, D, D] updates, P = min(B, K): a loop over the classes would copy the [K, D, D] carry
  # at every update (measured 4x slower at D = 2,048, K = 10, B = 1).
  present = jnp.unique(jnp.where(use, ys, k), size=min(y.shape[0], k), fill_value=k)
  pc = jnp.minimum(present, k - 1)
  sel = (ys[None, :] == present[:, None]) & use[None, :]                 # [P, B]
  z = jnp.where(sel[:, :, None], f[None] - mb[pc][:, None, :], 0.0)      # [P, B, D]
  shift = (coef[pc] * (present < k))[:, None] * (mb[pc] - means[pc])    # [P, D]
  if y.shape[0] == 1:  # one row, centred on itself, adds 0: the shift is the whole update
    rows = shift[:, None, :]
  else:
    rows = jnp.concatenate([z, shift[:, None, :]], axis=1)               # [P, B + 1, D]
  # Computed once before the D x D products (else XLA:CPU fuses the gathers into every output).
  # pylint: disable=protected-access
  rows = lda._materialised((rows,), jnp.sum(use).astype(jnp.int32))[0]
  if rows.shape[1] <= _OUTER_ROWS:
    # A handful of rows: a sum of outer products fuses into the scatter-add; as a dot with a
    # contraction of 2 it ran 3x slower (measured at D = 2,048 on the 2-core CPU).
    upd = sum(rows[:, b, :, None] * rows[:, b, None, :] for b in range(rows.shape[1]))
  else:
    upd = jnp.einsum("pbi,pbj->pij", rows, rows, precision=lda._HI)
  return scatter.at[present].add(upd, mode="drop")


def per_class_covariance(class_scatter: jax.Array, counts: jax.Array) -> jax.Array:
  """scikit-learn's ``_class_cov`` with ``OAS()``: Σ_k π_k OAS_k [D, D], each class's scatter
  S_k [K, D, D] divided by its count c_k [K] and shrunk with its own count
  (``cljax.ops.slda.oas_shrink``), π_k = c_k / Σc; classes without rows are left out."""
  c = counts.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(c), 1.0)

  def body(i, acc):
    cov, _ = lda.oas_shrink(class_scatter[i] / jnp.maximum(c[i], 1.0), c[i])
    return acc + jnp.where(c[i] > 0, c[i] / n, 0.0) * cov

  d = class_scatter.shape[1]
  return lax.fori_loop(0, class_scatter.shape[0], body, jnp.zeros((d, d), jnp.float32))


def per_class_head(state: State) -> tuple:
  """(W [D, K], b [K]) of the per-class OAS covariance (no priors: :func:`predict` adds them)."""
  stats = state.lda
  sigma = per_class_covariance(state.class_scatter, stats.counts)
  sigma = 0.5 * (sigma + sigma.T)
  d = sigma.shape[0]
  # Before any within-class scatter (one row per class) OAS gives 0: nearest mean stands in,
  # as ``cljax.ops.slda.head`` does for the pooled form.
  sigma = jnp.where(jnp.trace(sigma) > 0, sigma, jnp.eye(d, dtype=jnp.float32))
  w = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(sigma, lower=True), stats.means.T)
  return w, -0.5 * jnp.sum(stats.means * w.T, axis=1)


def merge(a: State, b: State) -> State:
  """The statistics of two DISJOINT parts of a stream combined exactly (Chan et al.): counts add,
  means are count-weighted, each scatter gains ``(c_a c_b / (c_a + c_b)) δ δᵀ`` with δ the
  difference of the means (per class with ``covariance="per_class"``, summed over classes for the
  pooled form). Both states must share the embedding (same key and γ: e.g. data-parallel shards
  of one learner, ``gamma`` given as a float); ``a``'s embedding and warm-up buffer are kept.
  Cost: 2·K·D² FLOPs."""
  if a.class_scatter is None:
    return a._replace(lda=lda.merge(a.lda, b.lda))
  ca = a.lda.counts.astype(jnp.float32)
  cb = b.lda.counts.astype(jnp.float32)
  delta = b.lda.means - a.lda.means
  coef = ca * cb / jnp.maximum(ca + cb, 1.0)
  scatter = (a.class_scatter + b.class_scatter
             + coef[:, None, None] * delta[:, :, None] * delta[:, None, :])
  means = a.lda.means + delta * (cb / jnp.maximum(ca + cb, 1.0))[:, None]
  stats = a.lda._replace(means=means, counts=a.lda.counts + b.lda.counts, n=a.lda.n + b.lda.n,
                         stale=jnp.ones((), jnp.bool_))
  return a._replace(lda=stats, class_scatter=scatter)


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
               warm_rows: int, covariance: str = "per_class") -> State:
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
  stats = lda.init_state(num_classes, embed_dim)
  class_scatter = None
  if covariance == "per_class":
    # S_k live in class_scatter; a [1, 1] stand-in (orbax refuses zero-size arrays)
    stats = stats._replace(scatter=jnp.zeros((1, 1), jnp.float32))
    class_scatter = jnp.zeros((num_classes, embed_dim, embed_dim), jnp.float32)
  return State(embed=params, lda=stats, warm=warm, class_scatter=class_scatter)


def from_buffer(state: State, *, net: Net) -> tuple:
  """(embedding params, head stats, per-class scatters or None) of the warm-up rows buffered so
  far: γ from them, their statistics streamed from empty."""
  w = state.warm
  valid = jnp.arange(w.y.shape[0]) < w.n
  params = {**state.embed, "gamma": scale_gamma_masked(w.x, valid)}
  empty = lda.init_state(*state.lda.means.shape)._replace(
      scatter=jnp.zeros_like(state.lda.scatter))
  zeros = None if state.class_scatter is None else jnp.zeros_like(state.class_scatter)
  # The rows are stored after the backbone: embedded as they are.
  return (params, *stream_stats(empty, zeros, net.features(params, w.x), w.y, valid))


def settled(state: State, *, net: Net) -> State:
  """The state to predict with: itself once γ is fixed, otherwise the warm-up buffer's (γ and
  statistics of the rows buffered so far)."""
  if state.warm is None:
    return state

  def buffered(s):
    params, stats, class_scatter = from_buffer(s, net=net)
    return s._replace(embed=params, lda=stats, class_scatter=class_scatter)

  return lax.cond(state.warm.n >= state.warm.y.shape[0], lambda s: s, buffered, state)


def update(state: State, batch, key, *, net: Net, backbone: Optional[Callable]) -> tuple:
  """RanDumb's ``update``: the valid, labelled rows streamed into the head, the first ones
  through the warm-up buffer when there is one."""
  del key
  _, use = contract.masks(batch)
  x = inputs(batch["x"], backbone)
  y = jnp.asarray(batch["y"], jnp.int32)
  info = contract.info(examples=jnp.sum(use).astype(jnp.int32))
  if state.warm is None:
    stats, cs = stream_stats(state.lda, state.class_scatter, net.features(state.embed, x), y, use)
    return state._replace(lda=stats, class_scatter=cs), info
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
  params, stats, cs = lax.cond(fills, functools.partial(from_buffer, net=net),
                               lambda s: (s.embed, s.lda, s.class_scatter), state)
  stats, cs = stream_stats(stats, cs, net.features(params, x), y, use & (pos >= n_warm))
  return state._replace(embed=params, lda=stats, class_scatter=cs), info


def head(state: State) -> tuple:
  """(W [D, K], b [K]) of the state's statistics: the cache when fresh, else solved."""
  if state.class_scatter is None:
    return lax.cond(state.lda.stale, lambda s: lda.head(s, "oas", "cholesky"),
                    lambda s: (s.weights, s.bias), state.lda)
  return lax.cond(state.lda.stale, per_class_head, lambda s: (s.lda.weights, s.lda.bias), state)


def refresh(state: State) -> State:
  """The cached LDA head recomputed (per-class or pooled OAS covariance)."""
  w, b = head(state)
  return state._replace(lda=state.lda._replace(weights=w, bias=b,
                                               stale=jnp.zeros((), jnp.bool_)))


def predict(state: State, x, *, net: Net, backbone: Optional[Callable],
            priors: bool) -> jax.Array:
  """Scores [B, K]: the LDA head on φ(x), plus log class priors if ``priors``; unseen classes
  score −inf."""
  state = settled(state, net=net)
  stats = state.lda
  w, b = head(state)
  f = net.features(state.embed, inputs(x, backbone))
  s = jnp.dot(f.astype(jnp.float32), w, precision=lda._HI) + b  # pylint: disable=protected-access
  s = jnp.where(stats.counts > 0, s, -jnp.inf)
  if priors:
    counts = stats.counts.astype(jnp.float32)
    s = s + jnp.log(jnp.maximum(counts, 1.0) / jnp.maximum(counts.sum(), 1.0))
  return s


@register("randumb", inputs=("backbone",))
def randumb(*, num_classes: int, embedding: str = "random_fourier", embed_dim: int = 4096,
            gamma: Union[str, float] = "scale", gamma_rows: int = 256, priors: bool = True,
            covariance: str = "per_class", backbone: Optional[Callable] = None,
            donate: bool = False) -> Learner:
  """Builds RanDumb (see the module docstring).

  Args:
    num_classes: K (unseen classes score −inf).
    embedding: ``random_fourier`` (RanDumb) or ``random_relu`` (RanPAC's projection).
    embed_dim: D, the number of random features (paper: up to 25,000; the default 4,096 keeps
      the per-class state at 671 MB for K = 10).
    gamma: γ of the Fourier features: ``"scale"`` (1 / (d · Var) of the stream's first
      ``gamma_rows`` examples) or a float. Ignored by ``random_relu``.
    gamma_rows: examples buffered (raw) before γ = "scale" is fixed (module docstring).
    priors: add log class priors (counts / n) to the scores, as scikit-learn's LDA does.
    covariance: ``"per_class"`` (scikit-learn's per-class OAS averaged by the priors, the
      reference's estimator; K·D² floats of state) or ``"pooled"`` (one OAS of the pooled
      within-class covariance; D² floats, for large D or K). Module docstring.
    backbone: optional frozen feature extractor x [B, ...] -> [B, d]; the embedding then applies
      to its features (RanDumb on pretrained-ViT features). Without it: raw inputs, flattened.
    donate: donate the state to ``update`` (the D x D scatter is updated in place; callers must
      not keep the state passed in, e.g. for an asynchronous checkpoint).
  """
  if embedding not in EMBEDDINGS:
    raise ValueError(f"unknown embedding {embedding!r}; valid: {list(EMBEDDINGS)}")
  if covariance not in COVARIANCES:
    raise ValueError(f"unknown covariance {covariance!r}; valid: {list(COVARIANCES)} "
                     "('pooled' for large embed_dim x num_classes)")
  if int(embed_dim) < 1:
    raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
  need = 4 * int(num_classes) * int(embed_dim) ** 2
  if covariance == "per_class" and need > PER_CLASS_MAX_BYTES:
    raise ValueError(f"covariance='per_class' needs 4·K·D² = {need / 2**30:.1f} GiB of state "
                     f"(K = {num_classes}, D = {embed_dim}); pass covariance='pooled' "
                     f"({4 * int(embed_dim) ** 2 / 2**30:.2f} GiB) or a smaller embed_dim")
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
                           warm_rows=int(gamma_rows) if warm else 0, covariance=covariance)
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
