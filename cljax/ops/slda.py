"""Streaming linear discriminant analysis statistics (Deep SLDA, Hayes and Kanan 2020).

Pure, jittable kernels over one state pytree, :class:`SLDAState`. Shapes: K classes, d feature
dimensions, B rows per batch.

Covariance storage. The state keeps the *scatter* ``S`` [d, d] and the count ``cov_n`` it is
normalised by, so that the shared covariance is ``Σ = S / cov_n``. With the reference rule
``S = n·Σ`` and the per-example update ``Σ ← (n·Σ + (n/(n+1))·z zᵀ) / (n+1)`` becomes the
additive ``S ← S + (n/(n+1))·z zᵀ``, which is what lets a whole batch be applied in one matrix
product. ``cov_n`` is separate from the global count ``n`` because a *fixed* covariance keeps
``S`` and ``cov_n`` from the base initialization while ``n`` and the means go on streaming.

Update rules (``rule=``):

* ``"reference"``: tyler-hayes/Deep_SLDA and Avalanche ``StreamingLDA``. For each example,
  covariance first with the class mean *before* the example, weight ``n/(n+1)`` with the GLOBAL
  count n. A class that was never seen has mean 0, so its first example adds the raw, uncentred
  ``x xᵀ``; this is kept on purpose (it is what the reference does).
* ``"pooled"``: the exact pooled within-class scatter ``Σ_k Σ_{i∈k} (x_i − μ_k)(x_i − μ_k)ᵀ``
  (Welford's per-example form, weight ``c_y/(c_y+1)`` with the CLASS count); ``Σ = S/n`` is the
  maximum-likelihood within-class covariance. It is order-invariant, a batch applied this way
  equals Chan et al.'s parallel merge of the state with the batch's own statistics, and
  :func:`merge` (Chan's formula) combines two such states exactly.

Both rules apply a batch exactly (up to rounding) as the sequential per-example pass would:
each row is centred on its class mean as it stood just before that row, i.e. after the earlier
rows of the same class in the same batch (a segmented prefix sum over the rows grouped by
class), weighted with the count at that row, and ``S += Zᵀ diag(w) Z``. :func:`update_scan` is the
per-example ``lax.scan`` form of the same rules, kept as the in-repo reference.

Prediction: ``Λ = ((1−ε)Σ + εI)⁻¹``, ``W = Λ Mᵀ`` [d, K], ``b_k = −½ μ_kᵀ Λ μ_k``,
``scores = X W + b``; no class priors. ``W`` and ``b`` are cached in the state (Λ itself is
not: the Cholesky path never forms it, and predict only needs W and b). Updates only set
``stale``; :func:`refresh` recomputes the cache (one Cholesky and a K-column solve, more work
than a batch update at K ≳ B, which is why it is not done on every update) and :func:`scores`
uses the cache when it is fresh, else solves on the fly, so it is always correct and cheap once
refreshed. The cache is built for one (shrinkage, solver) pair: call :func:`scores` with the
pair used by :func:`refresh`.

Masks: rows with ``mask`` False, or with a label outside [0, K), are skipped entirely (not
counted). Shape and label checks that need concrete values live in the callers' Python
boundary (:func:`fit_base_checked`, the ``slda`` learner).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

_HI = lax.Precision.HIGHEST  # statistics must not drop to bf16/tf32 passes on accelerators

RULES = ("reference", "pooled")
_MIN_ROWS = 8  # update_batch materialises the rows of smaller batches (``_materialised``)
SOLVERS = ("cholesky", "pinv")


class SLDAState(NamedTuple):
  """Streaming LDA statistics plus the cached linear head.

  Attributes:
    means: [K, d] float32 class means μ_k (0 for unseen classes).
    counts: [K] int32 examples seen per class c_k.
    scatter: [d, d] float32 scatter S; the shared covariance is ``S / max(cov_n, 1)``.
    n: [] int32 global count of examples ingested (labelled, valid rows only).
    cov_n: [] int32 count ``S`` is normalised by (= n for a plastic covariance).
    weights: [d, K] float32 cached ``W = Λ Mᵀ``.
    bias: [K] float32 cached ``b_k = −½ μ_kᵀ Λ μ_k``.
    stale: [] bool, True when the statistics changed since ``weights``/``bias`` were computed.
    skip: [] bool, read by the ``slda`` learner only (the kernels here carry it along): True
      while the stream replays a base set that ``fit_base`` already fitted, so its updates are
      ignored until the first ``end_of_step`` (the ``slda`` learner's ``skip_base_step``).
  """

  means: jax.Array
  counts: jax.Array
  scatter: jax.Array
  n: jax.Array
  cov_n: jax.Array
  weights: jax.Array
  bias: jax.Array
  stale: jax.Array
  skip: jax.Array


def init_state(num_classes: int, dim: int) -> SLDAState:
  """Empty statistics for ``num_classes`` classes of ``dim``-dimensional features."""
  return SLDAState(
      means=jnp.zeros((num_classes, dim), jnp.float32),
      counts=jnp.zeros((num_classes,), jnp.int32),
      scatter=jnp.zeros((dim, dim), jnp.float32),
      n=jnp.zeros((), jnp.int32),
      cov_n=jnp.zeros((), jnp.int32),
      weights=jnp.zeros((dim, num_classes), jnp.float32),
      bias=jnp.zeros((num_classes,), jnp.float32),
      stale=jnp.ones((), jnp.bool_),
      skip=jnp.zeros((), jnp.bool_),
  )


def _row_mask(state: SLDAState, y: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """[B] bool: rows that count (mask True and label in range)."""
  k = state.means.shape[0]
  ok = (y >= 0) & (y < k)
  return ok if mask is None else ok & mask.astype(jnp.bool_)


def _check_rule(rule: str):
  if rule not in RULES:
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def update_batch(state: SLDAState,
                 x: jax.Array,
                 y: jax.Array,
                 mask: Optional[jax.Array] = None,
                 *,
                 rule: str = "reference",
                 plastic: bool = True) -> SLDAState:
  """Applies a batch exactly as the sequential per-example update would, in one matrix product.

  Args:
    state: current statistics.
    x: [B, d] features.
    y: [B] int labels; rows with a label outside [0, K) are skipped.
    mask: optional [B] bool; False rows are skipped entirely (padding, unlabelled).
    rule: "reference" (global-count weight n/(n+1)) or "pooled" (exact within-class scatter).
    plastic: if False the scatter and ``cov_n`` are left as they are (fixed covariance); means,
      counts and n still stream.

  Returns:
    The updated state, with ``stale`` set.

  Cost: 2·B·d² FLOPs (the scatter product) plus O(B·d·log B) for the sort and the segmented
  prefix sums and O(B·d) gathers/scatters; nothing of size K·d beyond touched rows.
  """
  _check_rule(rule)
  x = x.astype(jnp.float32)
  k = state.means.shape[0]
  m = _row_mask(state, y, mask)
  mf = m.astype(jnp.float32)
  n_rows = m.sum().astype(jnp.int32)
  # The global count at each row must be taken in batch order, before the rows are regrouped.
  n_before = state.n.astype(jnp.float32) + jnp.cumsum(mf) - mf

  # Regroup rows by class (stable, so batch order is kept inside a class; skipped rows last).
  # The scatter Σ_j w_j z_j z_jᵀ and the mean updates do not depend on the order of the terms,
  # so everything below stays in this order; what needs the batch order is the prefix inside a
  # class, which a segmented scan gives in O(B·d) instead of a [B, B]·[B, d] product.
  key = jnp.where(m, y, k).astype(jnp.int32)
  perm = jnp.argsort(key, stable=True)
  key, m, mf, n_before = key[perm], m[perm], mf[perm], n_before[perm]
  xs = jnp.where(m[:, None], x[perm], 0.0)  # where, not ×: padding may hold NaN/inf
  ys = jnp.where(m, key, 0)
  r, p = _exclusive_segment_prefix(key, xs)   # earlier same-class rows: count [B], sum [B, d]

  c_old = state.counts[ys].astype(jnp.float32)                 # [B]
  mu_old = state.means[ys]                                     # [B, d]
  c_before = c_old + r
  # μ_before = (c·μ + p)/(c + r), written as a correction to μ so large counts lose no digits.
  mu_before = mu_old + (p - r[:, None] * mu_old) / jnp.maximum(c_before, 1.0)[:, None]
  z = (xs - mu_before) * mf[:, None]

  if rule == "reference":
    w = n_before / (n_before + 1.0)
  else:
    w = c_before / (c_before + 1.0)
  w = w * mf

  if plastic:
    zw, zb = _materialised((z * w[:, None], z), n_rows)
    scatter = state.scatter + jnp.dot(zw.T, zb, precision=_HI)
    cov_n = state.cov_n + n_rows
  else:
    scatter, cov_n = state.scatter, state.cov_n

  # Each row moves its class mean by (x_j − μ_old)/c_new; only touched rows are scattered into.
  in_batch = jax.ops.segment_sum(mf, ys, k)                    # [K]
  c_new = c_old + in_batch[ys]
  step = (xs - mu_old) * (mf / jnp.maximum(c_new, 1.0))[:, None]
  means = state.means.at[ys].add(step)
  counts = state.counts.at[ys].add(m.astype(jnp.int32))

  return state._replace(means=means, counts=counts, scatter=scatter, n=state.n + n_rows,
                        cov_n=cov_n, stale=jnp.ones((), jnp.bool_))


def _materialised(rows, anything: jax.Array):
  """``rows`` (a tuple of [B, d] arrays) computed once, before the [d, d] product reading them.

  With a few rows (B = 1: one example at a time) the product becomes an elementwise loop into
  which XLA:CPU fuses the rows' gathers and divisions, recomputed for each of the d x d outputs:
  6-10x slower than the product itself at d = 4096 (notes/baselines.md, RanDumb). A while loop
  whose trip count the compiler cannot see (1, from ``anything``'s value) and whose body changes
  the carry (adds an exact 0) is a fusion boundary; an optimization barrier, a conditional with
  equal branches and a loop with an identity body were all simplified away (measured).
  """
  if rows[0].shape[0] >= _MIN_ROWS:
    return rows
  start = jnp.minimum(anything, 0).astype(jnp.int32)  # 0 for any count >= 0

  def body(c):
    zero = 0.0 * c[0].astype(jnp.float32)
    return (c[0] + 1,) + tuple(r + zero for r in c[1:])

  out = lax.while_loop(lambda c: c[0] < 1, body, (start,) + tuple(rows))
  return out[1:]


def _exclusive_segment_prefix(key: jax.Array, xs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per row, the count [B] and sum [B, d] of the EARLIER rows with the same key.

  ``key`` [B] must be sorted so that equal keys are contiguous. Sums restart at each segment
  (no cumulative-sum-and-subtract, which would cancel digits across the whole batch).
  """
  b = key.shape[0]
  start = jnp.concatenate([jnp.ones((1,), jnp.bool_), key[1:] != key[:-1]])

  def combine(lhs, rhs):
    return lhs[0] | rhs[0], jnp.where(rhs[0][..., None], rhs[1], lhs[1] + rhs[1])

  _, inclusive = lax.associative_scan(combine, (start, xs))
  shifted = jnp.concatenate([jnp.zeros_like(xs[:1]), inclusive[:-1]])
  prefix = jnp.where(start[:, None], 0.0, shifted)
  idx = jnp.arange(b)
  count = (idx - lax.cummax(jnp.where(start, idx, 0))).astype(jnp.float32)
  return count, prefix


def update_scan(state: SLDAState,
                x: jax.Array,
                y: jax.Array,
                mask: Optional[jax.Array] = None,
                *,
                rule: str = "reference",
                plastic: bool = True) -> SLDAState:
  """The per-example update as a ``lax.scan`` in the reference's own order (in-repo reference).

  Same arguments and result as :func:`update_batch`; cost B sequential rank-1 updates of S.
  """
  _check_rule(rule)
  m = _row_mask(state, y, mask)
  ys = jnp.where(m, y, 0).astype(jnp.int32)

  def step(carry, row):
    means, counts, scatter, n, cov_n = carry
    xi, yi, mi = row
    c = counts[yi].astype(jnp.float32)
    z = xi - means[yi]
    nf = n.astype(jnp.float32)
    w = nf / (nf + 1.0) if rule == "reference" else c / (c + 1.0)
    if plastic:
      scatter = scatter + jnp.where(mi, w, 0.0) * jnp.outer(z, z)
      cov_n = cov_n + mi.astype(jnp.int32)
    means = means.at[yi].add(jnp.where(mi, 1.0 / (c + 1.0), 0.0) * z)
    counts = counts.at[yi].add(mi.astype(jnp.int32))
    return (means, counts, scatter, n + mi.astype(jnp.int32), cov_n), None

  carry = (state.means, state.counts, state.scatter, state.n, state.cov_n)
  xs = jnp.where(m[:, None], x.astype(jnp.float32), 0.0)  # padding may hold NaN/inf
  (means, counts, scatter, n, cov_n), _ = lax.scan(step, carry, (xs, ys, m))
  return state._replace(means=means, counts=counts, scatter=scatter, n=n, cov_n=cov_n,
                        stale=jnp.ones((), jnp.bool_))


def merge(a: SLDAState, b: SLDAState) -> SLDAState:
  """Combines the statistics of two DISJOINT parts of a data set (Chan et al.'s parallel update).

  counts and n add; means are count-weighted; ``S = S_a + S_b + Σ_k (c_a c_b/(c_a+c_b)) δ_k δ_kᵀ``
  with ``δ_k = μ_b,k − μ_a,k``. For states built with ``rule="pooled"`` (or :func:`fit_base`
  scatters without OAS) this is exactly the state one pass over both parts gives, in any order;
  that is what data-parallel shards need. Reference-rule scatters are order-dependent, so their
  merge is the pooled combination, not what one sequential reference pass would give. Two states
  that both contain the same base initialization would count it twice.

  Cost: 2·K·d² FLOPs.
  """
  ca = a.counts.astype(jnp.float32)
  cb = b.counts.astype(jnp.float32)
  c = jnp.maximum(ca + cb, 1.0)
  delta = b.means - a.means
  means = a.means + delta * (cb / c)[:, None]
  coef = ca * cb / c
  scatter = a.scatter + b.scatter + jnp.dot((delta * coef[:, None]).T, delta, precision=_HI)
  return a._replace(means=means, counts=a.counts + b.counts, scatter=scatter, n=a.n + b.n,
                    cov_n=a.cov_n + b.cov_n, stale=jnp.ones((), jnp.bool_))


def oas(r: jax.Array, mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Oracle Approximating Shrinkage covariance of assumed-centred rows (Chen et al. 2010).

  Same estimator as ``sklearn.covariance.OAS(assume_centered=True)``: with the empirical
  ``E = RᵀR/N`` it is :func:`oas_shrink` ``(E, N)``.

  Args:
    r: [N, p] rows, already centred (e.g. residuals x − μ_y).
    mask: optional [N] bool; False rows are left out (N counts True rows only).

  Returns:
    (Σ [p, p] float32, ρ [] float32).
  """
  r = r.astype(jnp.float32)
  if mask is not None:
    r = jnp.where(mask.astype(jnp.bool_)[:, None], r, 0.0)
    n = mask.astype(jnp.float32).sum()
  else:
    n = jnp.float32(r.shape[0])
  emp = jnp.dot(r.T, r, precision=_HI) / jnp.maximum(n, 1.0)
  return oas_shrink(emp, n)


def oas_shrink(emp: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array]:
  """OAS shrinkage of an empirical covariance ``emp`` [p, p] estimated from ``n`` rows.

  ``μ = tr(E)/p``, ``α = mean(E²)``, shrinkage ``ρ = min((α+μ²) / ((n+1)(α−μ²/p)), 1)`` (1 when
  the denominator is 0) and ``Σ = (1−ρ)E + ρμI`` (scikit-learn's ``oas``). ρ depends only on E
  and n, so a streamed scatter gives the same estimate as the offline rows (RanDumb's point).

  Returns:
    (Σ [p, p] float32, ρ [] float32).
  """
  emp = emp.astype(jnp.float32)
  p = emp.shape[0]
  n = jnp.asarray(n, jnp.float32)
  alpha = jnp.mean(emp**2)
  mu = jnp.trace(emp) / p
  num = alpha + mu**2
  den = (n + 1.0) * (alpha - mu**2 / p)
  rho = jnp.where(den == 0, 1.0, jnp.minimum(num / jnp.where(den == 0, 1.0, den), 1.0))
  cov = (1.0 - rho) * emp + rho * mu * jnp.eye(p, dtype=jnp.float32)
  return cov, rho


def fit_base(x: jax.Array,
             y: jax.Array,
             num_classes: int,
             mask: Optional[jax.Array] = None,
             *,
             shrink: bool = True) -> SLDAState:
  """Base initialization from a batch of features (reference ``fit_base``).

  Per-class means and counts, n = cov_n = N, and Σ the OAS estimate of the residuals x − μ_y
  (assume-centred), stored as ``S = N·Σ``. With ``shrink=False`` Σ is the plain within-class
  covariance, so ``S`` is the exact pooled scatter (what :func:`merge` expects).

  Args:
    x: [N, d] features.
    y: [N] int labels in [0, num_classes); out-of-range rows are skipped (checked in
      :func:`fit_base_checked`).
    num_classes: K.
    mask: optional [N] bool of rows to use.
    shrink: OAS (default) or the unshrunk within-class covariance.

  Returns:
    A fresh, stale :class:`SLDAState`. Cost: 2·N·d² FLOPs.
  """
  x = x.astype(jnp.float32)
  state = init_state(num_classes, x.shape[1])
  m = _row_mask(state, y, mask)
  ys = jnp.where(m, y, 0).astype(jnp.int32)
  mf = m.astype(jnp.float32)
  counts = jax.ops.segment_sum(m.astype(jnp.int32), ys, num_classes)
  x = jnp.where(m[:, None], x, 0.0)  # padding may hold NaN/inf
  sums = jax.ops.segment_sum(x, ys, num_classes)
  means = sums / jnp.maximum(counts, 1).astype(jnp.float32)[:, None]
  resid = (x - means[ys]) * mf[:, None]
  n = m.sum().astype(jnp.int32)
  if shrink:
    cov, _ = oas(resid, m)
    scatter = cov * n.astype(jnp.float32)
  else:
    scatter = jnp.dot(resid.T, resid, precision=_HI)
  return state._replace(means=means, counts=counts, scatter=scatter, n=n, cov_n=n)


def fit_base_checked(x, y, num_classes: int, mask=None, *, shrink: bool = True) -> SLDAState:
  """:func:`fit_base` behind concrete-value checks (shapes, label range); not jittable."""
  x = jnp.asarray(x)
  y_np = np.asarray(y)
  if x.ndim != 2:
    raise ValueError(f"fit_base: x must be [N, d] features, got shape {x.shape}")
  if y_np.shape != (x.shape[0],):
    raise ValueError(f"fit_base: y must have shape ({x.shape[0]},), got {y_np.shape}")
  if not np.issubdtype(y_np.dtype, np.integer):
    raise ValueError(f"fit_base: y must be integer labels, got dtype {y_np.dtype}")
  m_np = np.ones(y_np.shape, bool) if mask is None else np.asarray(mask, bool)
  if m_np.shape != y_np.shape:
    raise ValueError(f"fit_base: mask must have shape {y_np.shape}, got {m_np.shape}")
  bad = m_np & ((y_np < 0) | (y_np >= num_classes))
  if bad.any():
    raise ValueError(f"fit_base: labels must lie in [0, {num_classes}); got "
                     f"{sorted(set(y_np[bad].tolist()))[:10]}")
  if not m_np.any():
    raise ValueError("fit_base: no rows to fit (mask is all False)")
  return _fit_base_jit(x, jnp.asarray(y_np, jnp.int32), num_classes, jnp.asarray(m_np),
                       shrink=shrink)


_fit_base_jit = jax.jit(fit_base, static_argnames=("num_classes", "shrink"))


def covariance(state: SLDAState) -> jax.Array:
  """[d, d] shared covariance Σ = S / cov_n (0 before any data)."""
  return state.scatter / jnp.maximum(state.cov_n, 1).astype(jnp.float32)


def head(state: SLDAState, shrinkage: Union[float, str] = 1e-4, solver: str = "cholesky"):
  """The linear head from the current statistics: (W [d, K], b [K]).

  ``shrinkage`` ε (float) gives ``Λ = ((1−ε)Σ + εI)⁻¹``; ``"oas"`` gives Λ = the inverse of the
  OAS estimate of Σ (:func:`oas_shrink` with n = ``cov_n``; RanDumb's estimator). Λ is never
  formed with ``solver="cholesky"`` (the matrix is symmetric
  positive definite for ε > 0, so ``W`` comes from a Cholesky solve); ``solver="pinv"`` forms the
  SVD pseudo-inverse like the reference code (torch.pinverse, rcond 1e-15). Cost: d³/3 + 2·d²·K FLOPs
  (Cholesky), more for pinv. With ε = 0 and a singular Σ the Cholesky route gives NaNs.
  """
  if solver not in SOLVERS:
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
  sigma = covariance(state)
  d = sigma.shape[0]
  # The batched S update is symmetric only up to rounding; the solvers want it exact.
  if isinstance(shrinkage, str):
    if shrinkage != "oas":
      raise ValueError(f"shrinkage must be a float in [0, 1] or 'oas', got {shrinkage!r}")
    # RanDumb: the OAS-shrunk Σ, inverted without a ridge. Before any within-class scatter
    # (Σ = 0, e.g. one example per class) OAS gives 0; the identity (nearest mean) stands in.
    a, _ = oas_shrink(0.5 * (sigma + sigma.T), state.cov_n)
    a = jnp.where(jnp.trace(a) > 0, a, jnp.eye(d, dtype=jnp.float32))
  else:
    a = (1.0 - shrinkage) * 0.5 * (sigma + sigma.T) + shrinkage * jnp.eye(d, dtype=jnp.float32)
  if solver == "cholesky":
    cf = jax.scipy.linalg.cho_factor(a, lower=True)
    w = jax.scipy.linalg.cho_solve(cf, state.means.T)
  else:
    # torch.pinverse's rcond=1e-15, i.e. no truncation in float32; jnp's default cutoff
    # (10·d·eps) would drop the ε-sized directions that shrinkage is there to keep.
    w = jnp.dot(jnp.linalg.pinv(a, rtol=1e-15), state.means.T, precision=_HI)
  b = -0.5 * jnp.sum(state.means * w.T, axis=1)
  return w, b


def refresh(state: SLDAState, shrinkage: Union[float, str] = 1e-4,
            solver: str = "cholesky") -> SLDAState:
  """Recomputes the cached head if the statistics changed (no-op cost when fresh)."""
  w, b = lax.cond(state.stale, lambda s: head(s, shrinkage, solver),
                  lambda s: (s.weights, s.bias), state)
  return state._replace(weights=w, bias=b, stale=jnp.zeros((), jnp.bool_))


def scores(state: SLDAState,
           x: jax.Array,
           shrinkage: Union[float, str] = 1e-4,
           solver: str = "cholesky",
           mask_unseen: bool = True) -> jax.Array:
  """[B, K] float32 discriminant scores ``x W + b`` for features x [B, d].

  Uses the cached head when fresh (2·B·d·K FLOPs) and solves on the fly when stale. With
  ``mask_unseen`` classes with no examples score −inf; without, they follow the plain formula
  (score 0 for μ = 0, the reference behaviour).
  """
  w, b = lax.cond(state.stale, lambda s: head(s, shrinkage, solver),
                  lambda s: (s.weights, s.bias), state)
  s = jnp.dot(x.astype(jnp.float32), w, precision=_HI) + b
  if mask_unseen:
    s = jnp.where(state.counts > 0, s, -jnp.inf)
  return s
