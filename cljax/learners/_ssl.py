"""Pieces shared by the self-supervised baselines of the DietCL comparison (CaSSLe, DualNet):
an MLP head on encoder features (projector, predictor) and Barlow Twins on two views. Private to
cljax/learners.

Budget: one Barlow Twins step embeds ``batch_size // 2`` images twice (two views), i.e.
``batch_size`` rows forward-backward: one pass.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from cljax.models.pure import Net
from cljax.ops import ssl


def mlp_head(out_dim: int, hidden: Sequence[int]) -> Net:
  """An MLP on feature vectors (``cljax.models`` ``mlp``: Linear-ReLU per hidden layer, then
  Linear): Barlow Twins' projector and CaSSLe's predictor, without their BatchNorm layers."""
  return Net.named("mlp", int(out_dim), hidden=tuple(int(h) for h in hidden))


def init_head(head: Net, key: jax.Array, in_dim: int) -> dict:
  return head.init(key, (int(in_dim),))


def view_embeddings(encode, project, x: jax.Array, key: jax.Array, scale) -> tuple:
  """(z1, z2) [n, P]: ``project(encode(view))`` of two random resized crops of x [n, H, W, C];
  also returns the views (for a frozen teacher to embed the same ones)."""
  v1, v2 = ssl.two_views(key, x, scale)
  return project(encode(v1)), project(encode(v2)), (v1, v2)


def barlow(z1: jax.Array, z2: jax.Array, lamb: float, scale: float, w: jax.Array) -> jax.Array:
  """``cljax.ops.ssl.barlow_twins`` with row weights w [n]."""
  return ssl.barlow_twins(z1, z2, lamb, scale, weight=w)


def features_dim(net: Net, params: dict, in_shape) -> int:
  """The encoder's feature width (``net.features`` on one example, abstractly)."""
  return int(jax.eval_shape(net.features, params, jnp.zeros((1, *in_shape))).shape[1])
