"""Small Flax NNX models for 8x8 / 28x28 images and feature vectors (fast on CPU)."""

from __future__ import annotations

import math
from typing import Sequence

import jax
from flax import nnx


class MLP(nnx.Module):
  """Flatten -> [Linear -> ReLU] * len(hidden) -> Linear(num_classes).

  Input [B, ...] (any trailing shape, flattened), output logits [B, num_classes].
  ``features(x)`` returns the last hidden layer [B, hidden[-1]] (the penultimate representation).
  """

  def __init__(self, in_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 256),
               *, rngs: nnx.Rngs):
    dims = [math.prod(in_shape), *hidden]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
    self.head = nnx.Linear(dims[-1], num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    h = x.reshape(x.shape[0], -1)
    for layer in self.layers:
      h = nnx.relu(layer(h))
    return h

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x))


class CNN(nnx.Module):
  """Two 3x3 conv blocks (conv -> ReLU -> 2x2 avg-pool), then Linear -> ReLU -> Linear.

  Input [B, H, W, C] (H, W >= 4; 8x8 digits and 28x28 MNIST both work), logits [B, num_classes].
  ``features(x)`` returns the hidden dense layer [B, hidden].
  """

  def __init__(self, in_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32),
               hidden: int = 128, *, rngs: nnx.Rngs):
    if len(in_shape) != 3:
      raise ValueError(f"CNN needs image inputs [H, W, C]; got example shape {tuple(in_shape)}. "
                       "Use model='mlp' for feature vectors.")
    h, w, c = in_shape
    chans = [c, *channels]
    self.convs = nnx.List([nnx.Conv(a, b, (3, 3), padding="SAME", rngs=rngs)
                           for a, b in zip(chans[:-1], chans[1:])])
    for _ in channels:
      h, w = h // 2, w // 2
    self.fc = nnx.Linear(h * w * chans[-1], hidden, rngs=rngs)
    self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    h = x
    for conv in self.convs:
      h = nnx.avg_pool(nnx.relu(conv(h)), (2, 2), strides=(2, 2))
    return nnx.relu(self.fc(h.reshape(h.shape[0], -1)))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x))
