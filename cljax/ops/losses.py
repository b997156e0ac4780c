"""Classification losses and logit masks shared by the gradient-trained learners."""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASKED = -1e9  # logit of a class left out; finite, so a softmax over it stays NaN-free


def mask_logits(logits: jax.Array, allowed: jax.Array) -> jax.Array:
  """logits [B, K] with the classes not in ``allowed`` [K] bool set to a large negative value."""
  return jnp.where(allowed[None, :], logits, MASKED)


def cross_entropy(logits: jax.Array, y: jax.Array, weight: jax.Array) -> jax.Array:
  """Weighted mean softmax cross-entropy; logits [B, K], y [B] int, weight [B] (0 = ignore).

  Computed in float32 whatever the logits' dtype; labels < 0 (empty slots) read class 0 and must
  carry weight 0.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  ce = -jnp.take_along_axis(logp, jnp.maximum(y, 0)[:, None], axis=1)[:, 0]
  return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def masked_cross_entropy(logits: jax.Array, y: jax.Array, weight: jax.Array,
                         allowed: jax.Array) -> jax.Array:
  """``cross_entropy`` over the classes in ``allowed`` [K] bool only (a softmax over those)."""
  return cross_entropy(mask_logits(logits, allowed), y, weight)


def seen_classes(seen: jax.Array, y: jax.Array, use: jax.Array) -> jax.Array:
  """seen [K] bool with the classes of rows ``use`` [B] of y [B] added."""
  return seen | jnp.any(jax.nn.one_hot(y, seen.shape[0], dtype=bool) & use[:, None], axis=0)
