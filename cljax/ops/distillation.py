"""Distillation losses of LwF (Li and Hoiem 2016) and iCaRL (Rebuffi et al. 2017).

Shapes: logits [B, K], class masks [K] bool, row weights [B] (0 = padding). Computed in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.ops.losses import mask_logits


def kd_loss(student: jax.Array, teacher: jax.Array, allowed: jax.Array, weight: jax.Array,
            temperature: float = 2.0) -> jax.Array:
  """LwF's knowledge-distillation term: T² · KL(softmax(t/T) ‖ softmax(s/T)) over the classes in
  ``allowed`` (the old network's), weighted mean over rows; 0 when no class is allowed.

  The KL is the paper's cross-entropy with the old network's softened outputs minus their
  entropy (a constant), so the gradients are the same; the T² factor (Hinton et al. 2015) keeps
  its scale independent of T (mammoth ``models/lwf.py`` folds it into its α instead).
  """
  t = temperature
  log_s = jax.nn.log_softmax(mask_logits(student.astype(jnp.float32), allowed) / t)
  log_t = jax.nn.log_softmax(mask_logits(jax.lax.stop_gradient(teacher).astype(jnp.float32),
                                         allowed) / t)
  kl = jnp.sum(jnp.where(allowed[None, :], jnp.exp(log_t) * (log_t - log_s), 0.0), axis=-1)
  loss = t * t * jnp.sum(kl * weight) / jnp.maximum(jnp.sum(weight), 1.0)
  return jnp.where(jnp.any(allowed), loss, 0.0)


def icarl_targets(teacher: jax.Array, y: jax.Array, old: jax.Array) -> jax.Array:
  """iCaRL's training targets [B, K]: the old network's sigmoid outputs on the old classes
  (``old`` [K] bool), the one-hot label elsewhere (mammoth ``models/icarl.py`` ``get_loss``)."""
  onehot = jax.nn.one_hot(y, teacher.shape[-1], dtype=jnp.float32)
  return jnp.where(old[None, :], jax.nn.sigmoid(jax.lax.stop_gradient(teacher)), onehot)


def sigmoid_bce(logits: jax.Array, targets: jax.Array, allowed: jax.Array,
                weight: jax.Array) -> jax.Array:
  """Binary cross-entropy with logits, mean over rows (weighted) and the classes in ``allowed``
  (iCaRL: the classes seen so far)."""
  z = logits.astype(jnp.float32)
  per = jnp.maximum(z, 0.0) - z * targets + jnp.log1p(jnp.exp(-jnp.abs(z)))  # stable BCE
  per = jnp.sum(jnp.where(allowed[None, :], per, 0.0), axis=-1)
  n_cls = jnp.maximum(jnp.sum(allowed), 1).astype(jnp.float32)
  return jnp.sum(per * weight) / (jnp.maximum(jnp.sum(weight), 1.0) * n_cls)


