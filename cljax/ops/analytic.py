"""Closed-form heads on frozen features: class sums, Gram statistics, recursive least squares.

Pure, jittable kernels shared by the ``ncm``, ``acil`` and ``ranpac`` learners. Shapes: B rows
per batch, d feature dimensions (after any random expansion), K classes. Every kernel takes a
row mask ``mask`` [B] bool; a masked row (or one whose label lies outside [0, K)) contributes
exactly nothing, because its features and its one-hot target are zeroed before any product.

All statistics here are sums over rows (``Σ x``, ``XᵀX``, ``XᵀY``), so they are independent of
batch sizes and order up to float rounding, and two partial states merge by adding them
(:func:`merge_sums`). Recursive least squares (:func:`rls_update`) keeps the inverse instead,
``R = (XᵀX + γI)⁻¹``; :func:`rls_merge` combines two such states exactly through their Gram
matrices.

Products use ``Precision.HIGHEST``: on accelerators the default would drop statistics to bf16 or
tf32 passes.
"""

from __future__ import annotations

from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

_HI = lax.Precision.HIGHEST

INITS = ("normal", "uniform")
_SMALL_BLOCK = 4  # rls_update: blocks of at most this many rows invert their Cholesky factor


def features(x: jax.Array, backbone=None) -> jax.Array:
  """[B, d] float32 features of inputs x [B, ...]: the backbone's output, else x flattened."""
  if backbone is not None:
    f = backbone(x)
    if f.ndim != 2:
      raise ValueError(f"backbone must return [B, d] features, got shape {f.shape}")
    return f.astype(jnp.float32)
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


def feature_dim(x, backbone=None) -> int:
  """d of :func:`features` for inputs shaped like x [B, ...] (traced abstractly, no compute)."""
  return int(jax.eval_shape(lambda a: features(a, backbone),
                            jax.ShapeDtypeStruct(jnp.shape(x), jnp.float32)).shape[1])


def projection(key: jax.Array, d: int, m: int, init: str = "normal") -> jax.Array:
  """A fixed random projection W [d, m] float32 for :func:`expand`.

  init: "normal": W ~ N(0, 1) (RanPAC, ``RanPAC.py`` line 254: ``torch.randn(in_features, M)``);
    "uniform": W ~ U(−1/√d, 1/√d) (ACIL's ``RandomBuffer``, a ``torch.nn.Linear`` whose default
    ``reset_parameters`` draws that bound for a ReLU gain; ``analytic/Buffer.py`` lines 37-68).
  """
  if init not in INITS:
    raise ValueError(f"projection init must be one of {INITS}, got {init!r}")
  if init == "normal":
    return jax.random.normal(key, (d, m), jnp.float32)
  bound = 1.0 / jnp.sqrt(jnp.float32(d))
  return jax.random.uniform(key, (d, m), jnp.float32, -bound, bound)


def expand(x: jax.Array, w: Optional[jax.Array]) -> jax.Array:
  """ReLU random features max(0, x W) [B, m] of x [B, d]; x itself when ``w`` is None."""
  if w is None:
    return x
  return jax.nn.relu(jnp.dot(x, w, precision=_HI))


def masked_targets(y: jax.Array, mask: jax.Array, num_classes: int) -> tuple:
  """(one-hot targets [B, K] float32, row weights [B] float32): both zero on rows that are
  masked out or whose label lies outside [0, K)."""
  use = mask & (y >= 0) & (y < num_classes)
  w = use.astype(jnp.float32)
  return jax.nn.one_hot(jnp.clip(y, 0, num_classes - 1), num_classes) * w[:, None], w


def class_sums(sums: jax.Array, counts: jax.Array, x: jax.Array, y: jax.Array,
               mask: jax.Array) -> tuple:
  """Per-class feature sums [K, d] and counts [K] int32 after the batch x [B, d], y [B]."""
  onehot, _ = masked_targets(y, mask, sums.shape[0])
  return (sums + jnp.dot(onehot.T, x, precision=_HI),
          counts + onehot.sum(0).astype(jnp.int32))


def gram_update(g: jax.Array, q: jax.Array, x: jax.Array, y: jax.Array,
                mask: jax.Array) -> tuple:
  """G [d, d] += XᵀX and Q [d, K] += XᵀY over the batch's used rows (Y one-hot)."""
  onehot, w = masked_targets(y, mask, q.shape[1])
  xw = x * w[:, None]
  return g + jnp.dot(xw.T, xw, precision=_HI), q + jnp.dot(xw.T, onehot, precision=_HI)


def ridge_solve(g: jax.Array, q: jax.Array, lam) -> jax.Array:
  """W [d, K] = (G + λI)⁻¹ Q by a Cholesky solve (G symmetrised first: a summed Gram matrix
  is symmetric only up to rounding)."""
  d = g.shape[0]
  a = 0.5 * (g + g.T) + jnp.asarray(lam, jnp.float32) * jnp.eye(d, dtype=jnp.float32)
  return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(a, lower=True), q)


def validation_error(w: jax.Array, g_val: jax.Array, q_val: jax.Array, n_val) -> jax.Array:
  """Sum of squared errors ‖X_v W − Y_v‖² of W [d, K] on validation rows known only through
  their statistics: tr(Wᵀ G_v W) − 2 tr(Wᵀ Q_v) + n_v (one-hot targets have ‖Y_v‖² = n_v)."""
  return (jnp.sum(w * jnp.dot(g_val, w, precision=_HI)) - 2.0 * jnp.sum(w * q_val)
          + jnp.asarray(n_val, jnp.float32))


def select_ridge(g_fit: jax.Array, q_fit: jax.Array, g_val: jax.Array, q_val: jax.Array,
                 n_val, ridges: jax.Array) -> tuple:
  """RanPAC's ridge rule: the λ of ``ridges`` [R] whose W = (G_fit + λI)⁻¹ Q_fit has the least
  squared error on the validation rows (``RanPAC.py`` lines 138-150, ``optimise_ridge_parameter``:
  fit on 80% of the task's rows, mean squared error on the other 20%, λ in 10^-8 .. 10^8).

  Returns (λ [] float32, errors [R] float32; a λ whose solve is not finite scores +inf).
  """
  def err(lam):
    e = validation_error(ridge_solve(g_fit, q_fit, lam), g_val, q_val, n_val)
    return jnp.where(jnp.isfinite(e), e, jnp.inf)

  errors = lax.map(err, ridges.astype(jnp.float32))
  return ridges[jnp.argmin(errors)].astype(jnp.float32), errors


def rls_update(r: jax.Array, w: jax.Array, x: jax.Array, y: jax.Array,
               mask: jax.Array) -> tuple:
  """One block of recursive least squares (ACIL eqs. 9-10 in G-ACIL's batched form, reference
  ``analytic/AnalyticLinear.py`` lines 106-134, ``RecursiveLinear.fit``)::

      K = (I + X R Xᵀ)⁻¹,   R ← R − R Xᵀ K X R,   W ← W + R Xᵀ (Y − X W)

  with R = (Σ XᵀX + γI)⁻¹ [d, d] and W [d, K] = R Σ XᵀY before and after: the ridge solution of
  every row so far, whatever the blocks. Masked rows are zeroed (a zero row leaves R and W
  unchanged). K is applied through a Cholesky factor of I + X R Xᵀ (symmetric positive definite)
  rather than inverted, as the symmetric product A Aᵀ, A = R Xᵀ L⁻ᵀ, so R stays symmetric.
  """
  onehot, wr = masked_targets(y, mask, w.shape[1])
  x = x * wr[:, None]
  rx = jnp.dot(r, x.T, precision=_HI)  # R Xᵀ [d, B]
  s = jnp.eye(x.shape[0], dtype=jnp.float32) + jnp.dot(x, rx, precision=_HI)
  chol = jnp.linalg.cholesky(0.5 * (s + s.T))  # I + X R Xᵀ = L Lᵀ, [B, B]
  # R Xᵀ K X R = A Aᵀ with A = R Xᵀ L⁻ᵀ [d, B]: the update is a symmetric rank-B product, so R
  # stays symmetric without a d x d transpose per block (measured: 29 ms of 180 at d = 1024).
  if x.shape[0] <= _SMALL_BLOCK:
    # L⁻¹ by a B x B triangular solve, then one matmul: XLA:CPU's triangular solve against the
    # d right-hand sides of rxᵀ was 30x slower at B = 1 (31 ms against 1 ms at d = 1024), and
    # for a few rows the explicit factor inverse loses nothing.
    l_inv = jax.scipy.linalg.solve_triangular(chol, jnp.eye(x.shape[0], dtype=jnp.float32),
                                              lower=True)
    a = jnp.dot(rx, l_inv.T, precision=_HI)
  else:
    # Larger blocks: the backward-stable solve (an explicit L⁻¹ of a 22-row block of digits
    # measured 6e-4 of max |W| off the joint solution, this 1e-4); its cost is shared by B rows.
    a = jax.scipy.linalg.solve_triangular(chol, rx.T, lower=True).T
  r = r - jnp.dot(a, a.T, precision=_HI)
  resid = onehot - jnp.dot(x, w, precision=_HI)
  # The new R times Xᵀ directly: rx − A (Aᵀ Xᵀ) is cheaper but measured 2x less accurate.
  w = w + jnp.dot(jnp.dot(r, x.T, precision=_HI), resid, precision=_HI)
  return r, w


def rls_merge(r_a: jax.Array, w_a: jax.Array, r_b: jax.Array, w_b: jax.Array,
              gamma: float) -> tuple:
  """Two RLS states over disjoint rows (each started from R = I/γ, W = 0) merged into the state
  of all their rows: R⁻¹ = R_a⁻¹ + R_b⁻¹ − γI, W = R (R_a⁻¹ W_a + R_b⁻¹ W_b). Exact in exact
  arithmetic; costs three d x d inversions."""
  d = r_a.shape[0]
  eye = jnp.eye(d, dtype=jnp.float32)
  ga, gb = jnp.linalg.inv(r_a), jnp.linalg.inv(r_b)
  g = 0.5 * (ga + gb + (ga + gb).T) - gamma * eye
  c = jnp.dot(ga, w_a, precision=_HI) + jnp.dot(gb, w_b, precision=_HI)
  cf = jax.scipy.linalg.cho_factor(g, lower=True)
  return jax.scipy.linalg.cho_solve(cf, eye), jax.scipy.linalg.cho_solve(cf, c)


def merge_sums(a, b):
  """Two states of summed statistics (any pytree of sums and counts) over disjoint rows, merged:
  their element-wise sum."""
  return jax.tree.map(jnp.add, a, b)
