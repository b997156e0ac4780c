"""Vision Transformer encoder with a masked-autoencoder (MAE) decoder, in Flax NNX.

The model DietCL uses (Zhang et al., ICLR 2024; He et al. 2022 for MAE):

* patchify: an image [B, H, W, C] becomes N = (H/p)(W/p) patches of p*p*C pixels; the patch
  embedding is a Linear layer on flattened patches (the same function as a stride-p convolution,
  written as a matmul because XLA:CPU convolutions are slow);
* encoder: learned position embeddings, ``depth`` pre-LayerNorm transformer blocks, a final
  LayerNorm; no class token;
* classifier: a linear head on the mean of the patch tokens after the final LayerNorm. The head has a
  fixed maximum number of classes; it "grows" through a seen-class mask (``ops.losses.mask_logits``), so old
  rows are kept as they are and shapes never change;
* MAE: random masking keeps a fixed number of patches (argsort of uniform noise, so shapes are
  static); a light decoder fills in mask tokens, restores the patch order and predicts pixels; the
  loss is the MSE over masked patches only, against per-patch normalised pixels (``norm_pix``).

Precision: ``dtype`` is the compute dtype of the Linear, LayerNorm and attention layers (None, the
default: float32 throughout, as before), ``param_dtype`` the dtype parameters are stored in
(float32). With ``dtype=jnp.bfloat16`` the matmuls run in bfloat16 on float32 parameters, while the
attention softmax, LayerNorm statistics, the classifier head, the logits and the MAE loss stay in
float32.

Pure functions: ``cljax.models.pure.Net.named("vit_tiny", K)`` gives ``apply`` (logits),
``features`` and ``call(params, x, "mae_loss", key)`` as functions of a pure parameter dict.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# Encoder width, depth, heads, MLP ratio; decoder width, depth, heads (MAE's light decoder).
CONFIGS = {
    "micro": dict(dim=32, depth=2, heads=2, mlp_ratio=2.0, dec_dim=32, dec_depth=1, dec_heads=2),
    "tiny": dict(dim=192, depth=12, heads=3, mlp_ratio=4.0, dec_dim=128, dec_depth=2, dec_heads=4),
    "small": dict(dim=384, depth=12, heads=6, mlp_ratio=4.0, dec_dim=256, dec_depth=4,
                  dec_heads=8),
    "base": dict(dim=768, depth=12, heads=12, mlp_ratio=4.0, dec_dim=512, dec_depth=8,
                 dec_heads=16),
}


def patchify(x: jax.Array, patch: int) -> jax.Array:
  """[B, H, W, C] images -> [B, N, patch*patch*C] patches, row-major over the patch grid."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def random_masking(key: jax.Array, batch: int, num_patches: int, mask_ratio: float):
  """MAE masking with static shapes: keep ``n_keep = round(N (1 - ratio))`` patches per example.

  Returns ``ids_keep`` [B, n_keep] (patch indices kept, in noise order), ``mask`` [B, N] float
  (1 = masked, 0 = visible, in the original patch order) and ``ids_restore`` [B, N] (the inverse
  permutation used by the decoder to unshuffle).
  """
  n_keep = max(1, int(round(num_patches * (1.0 - mask_ratio))))
  noise = jax.random.uniform(key, (batch, num_patches))
  ids_shuffle = jnp.argsort(noise, axis=1)  # ascending: the first n_keep are kept
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  ids_keep = ids_shuffle[:, :n_keep]
  mask = (jnp.arange(num_patches)[None, :] >= n_keep).astype(jnp.float32)
  mask = jnp.take_along_axis(mask, ids_restore, axis=1)
  return ids_keep, mask, ids_restore


def _dtypes(dtype, param_dtype) -> dict:
  """Keyword arguments (compute ``dtype``, ``param_dtype``) for nnx Linear / LayerNorm."""
  return dict(dtype=None if dtype is None else jnp.dtype(dtype), param_dtype=jnp.dtype(param_dtype))


class Block(nnx.Module):
  """Pre-LayerNorm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)). Tokens [B, T, D].

  ``dtype``: compute dtype (None: that of the inputs and parameters); ``param_dtype``: parameters.
  The attention softmax is computed in float32 whatever ``dtype``.
  """

  def __init__(self, dim: int, heads: int, mlp_ratio: float, *, rngs: nnx.Rngs,
               dtype=None, param_dtype=jnp.float32):
    if dim % heads:
      raise ValueError(f"width {dim} is not divisible by {heads} heads")
    self.heads = heads
    init = nnx.initializers.xavier_uniform()
    dt = _dtypes(dtype, param_dtype)
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs, **dt)
    self.qkv = nnx.Linear(dim, 3 * dim, kernel_init=init, rngs=rngs, **dt)
    self.proj = nnx.Linear(dim, dim, kernel_init=init, rngs=rngs, **dt)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs, **dt)
    hidden = int(dim * mlp_ratio)
    self.fc1 = nnx.Linear(dim, hidden, kernel_init=init, rngs=rngs, **dt)
    self.fc2 = nnx.Linear(hidden, dim, kernel_init=init, rngs=rngs, **dt)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    h = self.heads
    qkv = self.qkv(self.norm1(x)).reshape(b, t, 3, h, d // h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, h, d/h]
    att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // h)
    att = jax.nn.softmax(att.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, d)
    x = x + self.proj(out)
    return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))


class ViTMAE(nnx.Module):
  """ViT encoder + MAE decoder + linear classifier head (see module docstring).

  Args:
    in_shape: example shape [H, W, C]; H and W must be multiples of ``patch``.
    num_classes: K, the fixed maximum number of classes of the head.
    config: a name from ``CONFIGS`` (micro, tiny, small, base); keyword overrides of its fields
      (``dim``, ``depth``, ...) may be given in ``overrides``.
    patch: patch side p in pixels (28x28 with p=7 -> 16 patches; 224x224 with p=16 -> 196).
    dtype: compute dtype of the encoder and decoder (None: float32; e.g. ``jnp.bfloat16`` or
      ``"bfloat16"``). The classifier head, the logits and the MAE loss are float32 regardless.
    param_dtype: dtype of the stored parameters (float32).
  """

  def __init__(self, in_shape: Sequence[int], num_classes: int, config: str = "tiny",
               patch: int = 16, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32,
               **overrides):
    if len(in_shape) != 3:
      raise ValueError(f"ViT needs image inputs [H, W, C]; got example shape {tuple(in_shape)}")
    if config not in CONFIGS:
      raise ValueError(f"unknown ViT config {config!r}; valid: {sorted(CONFIGS)}")
    cfg = {**CONFIGS[config], **overrides}
    unknown = set(overrides) - set(CONFIGS[config])
    if unknown:
      raise ValueError(f"unknown ViT options {sorted(unknown)}; valid: {sorted(CONFIGS[config])}")
    h, w, c = in_shape
    if h % patch or w % patch:
      raise ValueError(f"image {h}x{w} is not a multiple of patch size {patch}")
    self.patch, self.channels = patch, c
    self.num_patches = (h // patch) * (w // patch)
    self.depth = cfg["depth"]
    dim, ddim = cfg["dim"], cfg["dec_dim"]
    init = nnx.initializers.xavier_uniform()
    pos = nnx.initializers.normal(0.02)
    dt = _dtypes(dtype, param_dtype)
    pdt = dt["param_dtype"]
    self.patch_embed = nnx.Linear(patch * patch * c, dim, kernel_init=init, rngs=rngs, **dt)
    self.pos_embed = nnx.Param(pos(rngs.params(), (1, self.num_patches, dim), pdt))
    self.blocks = nnx.List([Block(dim, cfg["heads"], cfg["mlp_ratio"], rngs=rngs, **dt)
                            for _ in range(cfg["depth"])])
    self.norm = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs, **dt)
    # The head computes in float32 (it is small), so logits are float32 whatever ``dtype``.
    self.head = nnx.Linear(dim, num_classes, kernel_init=nnx.initializers.normal(0.01),
                           rngs=rngs, param_dtype=pdt, dtype=jnp.float32)
    # MAE decoder.
    self.dec_embed = nnx.Linear(dim, ddim, kernel_init=init, rngs=rngs, **dt)
    self.mask_token = nnx.Param(pos(rngs.params(), (1, 1, ddim), pdt))
    self.dec_pos_embed = nnx.Param(pos(rngs.params(), (1, self.num_patches, ddim), pdt))
    self.dec_blocks = nnx.List([Block(ddim, cfg["dec_heads"], cfg["mlp_ratio"], rngs=rngs, **dt)
                                for _ in range(cfg["dec_depth"])])
    self.dec_norm = nnx.LayerNorm(ddim, epsilon=1e-6, rngs=rngs, **dt)
    self.dec_pred = nnx.Linear(ddim, patch * patch * c, kernel_init=init, rngs=rngs, **dt)

  def encode(self, x: jax.Array, mask_key: Optional[jax.Array] = None, mask_ratio: float = 0.75):
    """Encoder tokens after the final LayerNorm.

    x [B, H, W, C] -> tokens [B, N, D] when ``mask_key`` is None; otherwise (tokens [B, n_keep, D],
    mask [B, N], ids_restore [B, N]) for a random mask of ratio ``mask_ratio`` (static).
    """
    t = self.patch_embed(patchify(x, self.patch))
    t = t + self.pos_embed[...].astype(t.dtype)
    if mask_key is not None:
      ids_keep, mask, ids_restore = random_masking(mask_key, x.shape[0], self.num_patches,
                                                   mask_ratio)
      t = jnp.take_along_axis(t, ids_keep[:, :, None], axis=1)
    blocks = self._blocks(t)
    t = self.norm(blocks[-1] if blocks else t)
    return t if mask_key is None else (t, mask, ids_restore)

  def _blocks(self, t: jax.Array) -> list:
    """Every encoder block's output tokens, in order (the input of the final LayerNorm last)."""
    out = []
    for blk in self.blocks:
      t = blk(t)
      out.append(t)
    return out

  def encode_prefixed(self, x: jax.Array, prefix: Optional[jax.Array] = None):
    """Unmasked encoding with ``prefix`` tokens [B, P, D] (no position embedding; L2P's prompts)
    before the patch tokens. Returns (tokens [B, P + N, D] after the final LayerNorm, the list of
    every block's output tokens [B, P + N, D]: DualNet's per-layer slow features)."""
    t = self.patch_embed(patchify(x, self.patch))
    t = t + self.pos_embed[...].astype(t.dtype)
    if prefix is not None:
      t = jnp.concatenate([prefix.astype(t.dtype), t], axis=1)
    blocks = self._blocks(t)
    return self.norm(blocks[-1] if blocks else t), blocks

  def decode(self, tokens: jax.Array, ids_restore: jax.Array) -> jax.Array:
    """Visible tokens [B, n_keep, D] -> predicted pixels [B, N, p*p*C] in patch order."""
    t = self.dec_embed(tokens)
    b, n_keep, ddim = t.shape
    n = ids_restore.shape[1]
    mask_tokens = jnp.broadcast_to(self.mask_token[...].astype(t.dtype), (b, n - n_keep, ddim))
    t = jnp.concatenate([t, mask_tokens], 1)
    t = jnp.take_along_axis(t, ids_restore[:, :, None], axis=1)
    t = t + self.dec_pos_embed[...].astype(t.dtype)
    for blk in self.dec_blocks:
      t = blk(t)
    return self.dec_pred(self.dec_norm(t))

  def mae_loss(self, x: jax.Array, key: jax.Array, mask_ratio: float = 0.75,
               norm_pix: bool = True, weight: Optional[jax.Array] = None) -> jax.Array:
    """MAE loss: mean squared error per masked patch, averaged over masked patches (scalar).

    ``norm_pix`` normalises each target patch by its own mean and variance (MAE's default).
    ``weight`` [B] (optional, 0 = ignore the example) weights examples.
    """
    tokens, mask, ids_restore = self.encode(x, key, mask_ratio)
    pred = self.decode(tokens, ids_restore).astype(jnp.float32)
    target = patchify(x, self.patch).astype(jnp.float32)
    if norm_pix:
      mu = target.mean(-1, keepdims=True)
      var = target.var(-1, keepdims=True)
      target = (target - mu) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean((pred - target) ** 2, axis=-1)  # [B, N]
    if weight is not None:
      mask = mask * weight[:, None]
    return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)

  def features(self, x: jax.Array) -> jax.Array:
    """Mean of the patch tokens after the final LayerNorm: [B, H, W, C] -> [B, D] float32."""
    return self.encode(x).astype(jnp.float32).mean(axis=1)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Logits [B, num_classes] of the linear head on ``features``."""
    return self.head(self.features(x))


def create(in_shape: Sequence[int], num_classes: int, rngs: nnx.Rngs, config: str = "tiny",
           patch: Optional[int] = None, **kw) -> ViTMAE:
  """Registry-style factory. Default patch: 16 for images >= 64 px, else the largest of 8, 7, 4, 2

  dividing the side with at least 2 patches per side (28 -> 7, 32 -> 8, 8 -> 4).
  """
  if patch is None:
    side = in_shape[0]
    patch = next((p for p in (16, 8, 7, 4, 2) if side % p == 0 and side // p >= 2
                  and (side >= 64 or p < 16)), 1)
  return ViTMAE(in_shape, num_classes, config=config, patch=patch, rngs=rngs, **kw)


def layer_id(path: Sequence, depth: int) -> int:
  """Layer index of a parameter for layer-wise lr decay (BEiT / MAE fine-tuning convention).

  0 = patch and position embeddings, i + 1 = encoder block i, depth + 1 = final norm, head and the
  MAE decoder (which gets the full learning rate).
  """
  top = str(path[0])
  if top in ("patch_embed", "pos_embed"):
    return 0
  if top == "blocks":
    return int(path[1]) + 1
  return depth + 1
