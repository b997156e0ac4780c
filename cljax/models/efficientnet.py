"""EfficientNet-Lite0 in Flax NNX (Tan and Le 2019; the "Lite" variant for mobile accelerators).

Lite differs from EfficientNet-B0 in three ways: no squeeze-and-excitation, ReLU6 instead of
swish, and a stem (32 channels) and head (1,280 channels) fixed whatever the scaling. Layout:

  stem   3x3 conv stride 2 (32) + BN + ReLU6
  blocks 16 MBConv blocks in 7 stages (kernel, stride, expansion, channels, repeats):
         (3, 1, 1, 16, 1) (3, 2, 6, 24, 2) (5, 2, 6, 40, 2) (3, 2, 6, 80, 3)
         (5, 1, 6, 112, 3) (5, 2, 6, 192, 4) (3, 1, 6, 320, 1)
         MBConv = [1x1 expand + BN + ReLU6] + kxk depthwise (stride) + BN + ReLU6 + 1x1 project +
         BN, with an identity shortcut when stride 1 and channels unchanged
  head   1x1 conv (1,280) + BN + ReLU6, global average pool, fc (the original's dropout 0.2
         before fc is left out: it only acts in training, and a random layer would put key
         leaves into the pure parameter dicts learners train)

Convolutions use TensorFlow's "SAME" padding (more padding at the bottom/right for stride 2), as
the TF checkpoints these weights come from and lukemelas' PyTorch port (``Conv2dStaticSamePadding``)
do. Batch norm: epsilon 1e-3, momentum 0.99 (torch 0.01). Inputs are channels-last
[N, H, W, 3] float32 already normalised ((pixel - 127) / 128, see ``cljax.models.pretrained``);
at 224 px the last block's output is 7x7x320.

Attribute names are the PyTorch port's without their leading underscore (``conv_stem``, ``bn0``,
``blocks[i].expand_conv/bn0/depthwise_conv/bn1/project_conv/bn2``, ``conv_head``, ``bn1``,
``fc``), so ``load_torch_state_dict`` maps the 296 tensors of the ``efficientnet-lite0`` state
dict (``_conv_stem.weight``, ``_blocks.3._depthwise_conv.weight``, ...) one to one.

A split point ("stem" or "blocks.i", G = the stem and blocks 0..i) divides the network into a
trunk G and a head F sharing its variables (``split_model``), like ``resnet.split_model``: REMIND's
frozen G and plastic F. "blocks.10" (end of the 112-channel stage, stride 16) is the middle of
the network: 14x14x112 at 224 px, 4x4x112 at 64 px.
"""

from __future__ import annotations

import re
from typing import Optional

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

# (kernel, stride, expansion, output channels, repeats) per stage.
STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
BN_EPS, BN_MOMENTUM = 1e-3, 0.99
NUM_BLOCKS = sum(s[-1] for s in STAGES)  # 16


def block_specs() -> list[tuple]:
  """(kernel, stride, expansion, in channels, out channels) of the 16 blocks in order."""
  out, cin = [], STEM_CHANNELS
  for k, s, e, c, r in STAGES:
    for i in range(r):
      out.append((k, s if i == 0 else 1, e, cin, c))
      cin = c
  return out


def _conv(cin, cout, k, stride=1, rngs=None):
  return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding="SAME", use_bias=False,
                  kernel_init=jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                  rngs=rngs)


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Depthwise convolution with TF "SAME" padding: x [N, H, W, C], kernel [k, k, 1, C].

  On CPU, a sum of k*k shifted, per-channel scaled slices. Why: XLA:CPU runs grouped
  convolutions with one channel per group 4-30x slower than this sum (measured here on
  EfficientNet-Lite0's shapes, batch 128: 32x32x96 3x3 stride 2 0.151 s vs 0.043 s; 4x4x672 5x5
  0.367 s vs 0.013 s), and far slower still inside loop bodies. Same values up to float rounding;
  differentiable. Other backends use ``lax.conv_general_dilated`` with one group per channel.
  """
  kh, kw, _, c = kernel.shape
  if jax.default_backend() != "cpu":
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=c)
  _, h, w, _ = x.shape
  pads = jax.lax.padtype_to_pads((h, w), (kh, kw), (stride, stride), "SAME")
  xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  oh = (xp.shape[1] - kh) // stride + 1
  ow = (xp.shape[2] - kw) // stride + 1
  out = None
  for a in range(kh):
    for b in range(kw):
      tap = xp[:, a:a + stride * (oh - 1) + 1:stride, b:b + stride * (ow - 1) + 1:stride, :]
      out = tap * kernel[a, b, 0] if out is None else out + tap * kernel[a, b, 0]
  return out


class DepthwiseConv(nnx.Module):
  """k x k depthwise convolution, no bias, "SAME" padding: [N, H, W, C] -> [N, H/s, W/s, C].

  Its own module rather than an ``nnx.Conv`` with groups, so that code rewriting every
  ``nnx.Conv`` (``resnet.use_matmul_kernel_grad``, used by REMIND's F) leaves it alone.
  ``kernel`` [k, k, 1, C] is laid out like ``nnx.Conv``'s (HWIO with I = 1).
  """

  def __init__(self, channels: int, kernel: int, stride: int, *, rngs: nnx.Rngs):
    init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    self.kernel = nnx.Param(init(rngs.params(), (kernel, kernel, 1, channels), jnp.float32))
    self.stride = int(stride)

  def __call__(self, x):
    return depthwise_conv(x, self.kernel[...], self.stride)


def _bn(c, rngs):
  return nnx.BatchNorm(c, momentum=BN_MOMENTUM, epsilon=BN_EPS, rngs=rngs)


def _bn_mask(mask):
  return None if mask is None else jnp.asarray(mask, bool).reshape(-1, 1, 1, 1)


class MBConv(nnx.Module):
  """Inverted-residual block without squeeze-excitation. [N, H, W, cin] -> [N, H/s, W/s, cout]."""

  def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int, *,
               rngs: nnx.Rngs):
    mid = cin * expand
    if expand != 1:
      self.expand_conv = _conv(cin, mid, 1, rngs=rngs)
      self.bn0 = _bn(mid, rngs)
    else:
      self.expand_conv = nnx.data(None)
      self.bn0 = nnx.data(None)
    self.depthwise_conv = DepthwiseConv(mid, kernel, stride, rngs=rngs)
    self.bn1 = _bn(mid, rngs)
    self.project_conv = _conv(mid, cout, 1, rngs=rngs)
    self.bn2 = _bn(cout, rngs)
    self.residual = stride == 1 and cin == cout

  def __call__(self, x, use_running_average: Optional[bool] = None, mask=None):
    """mask: None or [N, 1, 1, 1] bool, the rows batch statistics are computed over."""
    ura = use_running_average
    h = x
    if self.expand_conv is not None:
      h = jax.nn.relu6(self.bn0(self.expand_conv(h), use_running_average=ura, mask=mask))
    h = jax.nn.relu6(self.bn1(self.depthwise_conv(h), use_running_average=ura, mask=mask))
    h = self.bn2(self.project_conv(h), use_running_average=ura, mask=mask)
    return h + x if self.residual else h


class EfficientNetLite0(nnx.Module):
  """EfficientNet-Lite0. [N, H, W, in_channels] normalised float32 -> logits [N, num_classes]."""

  def __init__(self, num_classes: int = 1000, *, in_channels: int = 3, rngs: nnx.Rngs):
    self.conv_stem = _conv(in_channels, STEM_CHANNELS, 3, 2, rngs=rngs)
    self.bn0 = _bn(STEM_CHANNELS, rngs)
    self.blocks = nnx.List([MBConv(*spec, rngs=rngs) for spec in block_specs()])
    self.conv_head = _conv(STAGES[-1][3], HEAD_CHANNELS, 1, rngs=rngs)
    self.bn1 = _bn(HEAD_CHANNELS, rngs)
    self.fc = nnx.Linear(HEAD_CHANNELS, num_classes, rngs=rngs)

  def features(self, x, use_running_average: Optional[bool] = None, mask=None):
    """Globally average-pooled head activations [N, 1280] (the input of ``fc``)."""
    m = _bn_mask(mask)
    x = _stem(self, x, use_running_average, m)
    for b in self.blocks:
      x = b(x, use_running_average, m)
    return _head_features(self, x, use_running_average, m)

  def __call__(self, x, use_running_average: Optional[bool] = None, mask=None):
    return self.fc(self.features(x, use_running_average, mask))


def _stem(mod, x, ura, m):
  return jax.nn.relu6(mod.bn0(mod.conv_stem(x), use_running_average=ura, mask=m))


def _head_features(mod, x, ura, m):
  x = jax.nn.relu6(mod.bn1(mod.conv_head(x), use_running_average=ura, mask=m))
  return jnp.mean(x, axis=(1, 2))


def split_index(split: str) -> int:
  """Blocks in G for a split name: "stem" -> 0, "blocks.i" -> i + 1."""
  if split == "stem":
    return 0
  m = re.fullmatch(r"blocks\.(\d+)", str(split))
  if not m or int(m.group(1)) >= NUM_BLOCKS:
    raise ValueError(f"split must be 'stem' or 'blocks.i' with i in [0, {NUM_BLOCKS - 1}], got "
                     f"{split!r}")
  return int(m.group(1)) + 1


def split_shape(split: str, resolution: int) -> tuple:
  """(h, w, channels) of G's output for square inputs of ``resolution`` px (SAME padding:
  every stride-2 layer rounds up)."""
  n = split_index(split)
  size = -(-int(resolution) // 2)
  channels = STEM_CHANNELS
  for k, s, e, cin, cout in block_specs()[:n]:
    del k, e, cin
    size = -(-size // s)
    channels = cout
  return size, size, channels


class Trunk(nnx.Module):
  """G: the stem and the first blocks, sharing a model's variables. -> [N, h, w, c] maps."""

  def __init__(self, model: EfficientNetLite0, split: str):
    n = split_index(split)
    self.conv_stem, self.bn0 = model.conv_stem, model.bn0
    self.blocks = nnx.List(list(model.blocks)[:n])

  def __call__(self, x, use_running_average: Optional[bool] = None, mask=None):
    m = _bn_mask(mask)
    x = _stem(self, x, use_running_average, m)
    for b in self.blocks:
      x = b(x, use_running_average, m)
    return x


class Head(nnx.Module):
  """F: the remaining blocks, the head convolution, pooling and fc.

  [N, h, w, c] G maps -> logits [N, num_classes]. ``features`` gives the pooled [N, 1280].
  """

  def __init__(self, model: EfficientNetLite0, split: str):
    n = split_index(split)
    self.blocks = nnx.List(list(model.blocks)[n:])
    self.conv_head, self.bn1 = model.conv_head, model.bn1
    self.fc = model.fc

  def features(self, x, use_running_average: Optional[bool] = None, mask=None):
    m = _bn_mask(mask)
    for b in self.blocks:
      x = b(x, use_running_average, m)
    return _head_features(self, x, use_running_average, m)

  def __call__(self, x, use_running_average: Optional[bool] = None, mask=None):
    return self.fc(self.features(x, use_running_average, mask))


def split_model(model: EfficientNetLite0, split: str = "blocks.10") -> tuple[Trunk, Head]:
  """(G, F) modules sharing ``model``'s variables: F(G(x)) equals model(x) in eval mode."""
  return Trunk(model, split), Head(model, split)


# --- PyTorch state dicts (lukemelas' EfficientNet-PyTorch names) -------------------------------

_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}


def torch_key(path: tuple) -> str:
  """State-dict key of a variable path: ('blocks', 3, 'depthwise_conv', 'kernel') ->
  '_blocks.3._depthwise_conv.weight'."""
  *mods, leaf = [str(p) for p in path]
  return ".".join(m if m.isdigit() else "_" + m for m in mods) + "." + _TORCH_LEAF[leaf]


def _from_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf == "kernel" and value.ndim == 4:  # OIHW (depthwise: C,1,k,k) -> HWIO (k,k,1,C)
    return np.transpose(value, (2, 3, 1, 0))
  if leaf == "kernel" and value.ndim == 2:  # linear [out, in] -> [in, out]
    return value.T
  return value


def load_torch_state_dict(model: nnx.Module, state_dict: dict, skip: tuple = ()) -> list:
  """Copies a lukemelas-style EfficientNet-Lite0 state dict into ``model`` (in place).

  ``skip``: top-level attributes left as they are (e.g. ("fc",) for a new classifier).
  ``num_batches_tracked`` entries are ignored. Returns the keys used.

  Raises:
    KeyError: a model variable has no entry; ValueError: a shape disagrees.
  """
  used = []
  for path, var in nnx.to_flat_state(nnx.state(model)):
    if str(path[0]) in skip or path[-1] not in _TORCH_LEAF:
      continue
    key = torch_key(path)
    if key not in state_dict:
      raise KeyError(f"state dict has no {key!r} (is it an EfficientNet-Lite0 checkpoint?)")
    value = _from_torch_layout(path[-1], np.asarray(state_dict[key], np.float32))
    if value.shape != var.get_value().shape:
      raise ValueError(f"{key}: shape {value.shape} does not fit {var.get_value().shape}")
    var.set_value(jnp.asarray(value))
    used.append(key)
  return used
