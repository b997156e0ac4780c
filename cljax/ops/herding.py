"""Herding selection of exemplars (iCaRL, Rebuffi et al. 2017, Algorithm 4; Welling 2009).

For every class at once: features are L2-normalised, μ_c is the mean of class c's normalised
features, and the k-th exemplar of c is the row (not yet chosen) that brings the mean of the chosen
rows closest to μ_c:

    p_k = argmin_{x ∈ c, x ∉ {p_1..p_{k-1}}} ‖ μ_c − (φ(x) + Σ_{j<k} φ(p_j)) / k ‖

(the lowest row index on ties). This is the paper's rule, as mammoth ``models/icarl.py``
``fill_buffer`` implements it (there on unnormalised features); the original Theano code's
"w_t ← w_t + μ − φ(p)" variant may pick a row twice and is not this. Fixed shapes: m may be a
traced int (a ``lax.fori_loop`` of m iterations, each O(N·d + K·N)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalise(feats: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows of feats [N, d] divided by their L2 norm (zero rows stay zero), float32."""
  f = feats.astype(jnp.float32)
  return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), eps)


def herding_ranks(feats: jax.Array, y: jax.Array, mask: jax.Array, m, num_classes: int
                  ) -> jax.Array:
  """Each row's herding rank within its class (module docstring).

  Args:
    feats: [N, d] features (normalised here).
    y: [N] int labels in [0, num_classes) on rows where ``mask``.
    mask: [N] bool, the rows that may be chosen.
    m: exemplars to choose per class ([] int, static or traced); a class with fewer rows gives
      them all.
    num_classes: K.

  Returns:
    rank [N] int32: k for the row chosen (k+1)-th within its class, N for rows not chosen
    (masked rows included).
  """
  n = feats.shape[0]
  phi = normalise(feats)
  mask = jnp.asarray(mask, bool)
  ys = jnp.where(mask, y, 0).astype(jnp.int32)
  member = jax.nn.one_hot(ys, num_classes, dtype=bool) & mask[:, None]  # [N, K]
  counts = member.sum(0).astype(jnp.float32)
  mu = jnp.dot(member.T.astype(jnp.float32), phi, precision=jax.lax.Precision.HIGHEST)
  mu = mu / jnp.maximum(counts, 1.0)[:, None]

  def body(k, carry):
    rank, sums = carry
    cand = (sums[ys] + phi) / (k + 1.0)
    cost = jnp.sum((mu[ys] - cand) ** 2, axis=-1)
    avail = member.T & (rank == n)[None, :]  # [K, N]
    cost_kn = jnp.where(avail, cost[None, :], jnp.inf)
    best = jnp.argmin(cost_kn, axis=1)  # lowest index on ties
    ok = avail[jnp.arange(num_classes), best]
    rank = rank.at[jnp.where(ok, best, n)].set(k, mode="drop")
    return rank, sums + jnp.where(ok[:, None], phi[best], 0.0)

  rank0 = jnp.full((n,), n, jnp.int32)
  rank, _ = jax.lax.fori_loop(0, jnp.minimum(jnp.asarray(m, jnp.int32), n), body,
                              (rank0, jnp.zeros((num_classes, phi.shape[1]), jnp.float32)))
  return rank
