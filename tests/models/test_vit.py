"""Tests for cljax.models.vit: shapes, MAE loss on masked patches only, the grown head, lr layers.

The model is used as ``cljax.models.pure.Net.named("vit_micro", ...)``; every forward pass runs
jitted (op by op, a ViT dispatches for seconds on CPU), and parameters come from a jitted ``init``
(cached on disk across runs).
"""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.models import vit
from cljax.models.pure import Net
from cljax.ops import losses


def _micro(in_shape=(28, 28, 1), k=10, **kw):
  return vit.create(in_shape, k, nnx.Rngs(0), config="micro", **kw)


@functools.lru_cache(maxsize=None)
def _net(in_shape=(28, 28, 1), k=10, patch=7, dtype=None):
  """(Net, params) of a micro ViT for examples of shape ``in_shape`` (built once per process)."""
  net = Net.named("vit_micro", k, patch=patch, **({} if dtype is None else {"dtype": dtype}))
  return net, jax.jit(net.init, static_argnums=1)(jax.random.key(0), in_shape)


@pytest.mark.parametrize("in_shape,patch,n", [((28, 28, 1), 7, 16), ((224, 224, 3), 16, 196),
                                              ((8, 8, 1), 4, 4)])
def test_shapes(in_shape, patch, n):
  net, params = _net(in_shape, patch=patch)
  x = jnp.ones((2, *in_shape))
  assert net.module(params, in_shape).num_patches == n

  @jax.jit  # one program: op by op, the ViT dispatches for seconds on CPU
  def run(p, x):
    return (net.call(p, x, "encode"), net.call(p, x, "encode", jax.random.key(1)),
            net.apply(p, x), net.features(p, x), net.call(p, x, "mae_loss", jax.random.key(2)))

  tokens, (tok, mask, restore), logits, feats, loss = run(params, x)
  assert tokens.shape == (2, n, 32)
  n_keep = max(1, round(n * 0.25))
  assert tok.shape == (2, n_keep, 32)
  assert mask.shape == restore.shape == (2, n)
  assert np.all(np.asarray(mask).sum(1) == n - n_keep)
  assert logits.shape == (2, 10)
  assert feats.shape == (2, 32)
  assert np.isfinite(float(loss))


def test_default_patch_and_config_sizes():
  # Abstract modules (shapes only): the patch size is static.
  assert nnx.eval_shape(lambda: _micro((28, 28, 1))).patch == 7
  assert nnx.eval_shape(lambda: _micro((224, 224, 3))).patch == 16
  tiny = nnx.eval_shape(lambda: vit.create((224, 224, 3), 1000, nnx.Rngs(0), config="tiny"))
  enc = {k: v for k, v in nnx.to_flat_state(nnx.state(tiny, nnx.Param))
         if not str(k[0]).startswith(("dec", "mask_token"))}
  n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(dict(enc)))
  # timm vit_tiny_patch16_224 has 5,717,416 parameters with a class token (192) and its position
  # (192); this encoder has neither.
  assert n == 5_717_416 - 2 * 192


def test_masking_keeps_a_fixed_number_and_restores_order():
  ids_keep, mask, restore = vit.random_masking(jax.random.key(0), 3, 16, 0.75)
  ids_keep, mask = np.asarray(ids_keep), np.asarray(mask)
  for b in range(3):
    assert len(set(ids_keep[b])) == 4
    assert set(np.flatnonzero(mask[b] == 0)) == set(ids_keep[b])  # visible = kept


def test_mae_loss_only_counts_masked_patches():
  net, params = _net()

  @jax.jit
  def mae_loss(p, x, key):
    return net.call(p, x, "mae_loss", key)

  @jax.jit
  def encode_decode(p, x, key):  # the MAE forward pass, split where the target comes in
    m = net.module(p, x.shape[1:])
    tokens, mask, restore = m.encode(x, key)
    return m.decode(tokens, restore), mask

  x = jax.random.uniform(jax.random.key(0), (1, 28, 28, 1))
  key = jax.random.key(3)
  pred, mask_ = encode_decode(params, x, key)
  mask = np.asarray(mask_)[0].reshape(4, 4)  # patch grid of 7x7 patches
  vis = tuple(np.argwhere(mask == 0)[0])
  hid = tuple(np.argwhere(mask == 1)[0])
  base = float(mae_loss(params, x, key))

  def edit(cell):  # x with the 7x7 patch at grid cell (row, col) replaced by noise
    r, c = cell
    return x.at[0, 7 * r:7 * r + 7, 7 * c:7 * c + 7, 0].set(
        jax.random.uniform(jax.random.key(9), (7, 7)))

  # A masked patch: the encoder never sees it, only the target changes -> the loss changes.
  assert abs(float(mae_loss(params, edit(hid), key)) - base) > 1e-4
  # A visible patch also feeds the encoder, so hold the encoder input fixed and edit only the
  # reconstruction target: the loss must not move (visible patches carry no loss).
  def loss_with_target(img):
    t = vit.patchify(img, 7)
    t = (t - t.mean(-1, keepdims=True)) / jnp.sqrt(t.var(-1, keepdims=True) + 1e-6)
    return float(jnp.sum(jnp.mean((pred - t) ** 2, -1) * mask_) / jnp.sum(mask_))

  assert loss_with_target(x) == pytest.approx(base, rel=1e-5)
  assert loss_with_target(edit(vis)) == pytest.approx(base, rel=1e-6)
  assert abs(loss_with_target(edit(hid)) - base) > 1e-4


def test_head_mask_and_layer_ids():
  net, params = _net()
  x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
  seen = jnp.zeros(10, bool).at[jnp.array([2, 5])].set(True)
  pred = np.asarray(losses.mask_logits(jax.jit(net.apply)(params, x), seen)).argmax(1)
  assert set(pred) <= {2, 5}
  assert vit.layer_id(("patch_embed", "kernel"), 2) == 0
  assert vit.layer_id(("blocks", 1, "qkv", "kernel"), 2) == 2
  assert vit.layer_id(("head", "kernel"), 2) == 3
  assert vit.layer_id(("dec_blocks", 0, "fc1", "kernel"), 2) == 3


@pytest.mark.slow  # several seconds: the full suite runs it
def test_bfloat16_compute_keeps_float32_params_logits_and_loss():
  x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
  f32, p32 = _net()
  bf16, p16 = _net(dtype="bfloat16")
  # Same initialization, float32 parameters in both.
  assert jax.tree.structure(p32) == jax.tree.structure(p16)
  for a, b in zip(jax.tree.leaves(p32), jax.tree.leaves(p16)):
    assert b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
  key = jax.random.key(2)

  @jax.jit  # one program: op-by-op bfloat16 on CPU is slow
  def run(p32, p16):
    mae16 = lambda p: bf16.call(p, x, "mae_loss", key)
    return (bf16.call(p16, x, "encode"), f32.apply(p32, x), bf16.apply(p16, x),
            f32.call(p32, x, "mae_loss", key), mae16(p16), jax.grad(mae16)(p16))

  tok, lo32, lo16, l32, l16, g = run(p32, p16)
  assert tok.dtype == jnp.bfloat16
  assert lo16.dtype == jnp.float32
  np.testing.assert_allclose(lo16, lo32, atol=0.05 * float(jnp.abs(lo32).max()) + 1e-3)
  assert l16.dtype == jnp.float32
  assert float(l16) == pytest.approx(float(l32), rel=0.02)
  assert all(v.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(v)))
             for v in jax.tree.leaves(g))
