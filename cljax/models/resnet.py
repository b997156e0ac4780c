"""ResNet-18 in Flax NNX with a split point (REMIND's frozen G and plastic F; Deep SLDA's backbone).

The layout follows torchvision's ``resnet18``: BasicBlock, bias-free convolutions followed by batch
norm, stride 2 in the first block of layer2..layer4 with a 1x1 convolution + batch-norm
``downsample`` on the shortcut. Attribute names mirror torchvision (``conv1``, ``bn1``,
``layer1``..``layer4`` lists of blocks with ``conv1``/``bn1``/``conv2``/``bn2``/``downsample``,
``fc``), so ``load_torch_state_dict`` maps a torchvision state dict onto the model.

Inputs are channels-last, [N, H, W, C] float32 (torchvision is [N, C, H, W]).

* ``width`` scales every channel count (64 * width at layer1, 512 * width at layer4); tests use
  narrow models (e.g. width 1/8).
* ``stem="imagenet"``: 7x7 stride-2 convolution + 3x3 stride-2 max pool (224 px -> layer4 7x7).
  ``stem="small"``: 3x3 stride-1 convolution, no pool (28 or 32 px -> layer4 4x4).
* A split point names the last block of G: "stem", "layer1".."layer4" (the whole layer) or
  "layerK.i" (block i of layer K). REMIND's is "layer4.0": G = stem..layer4.0 (512 x 7 x 7 at
  224 px), F = layer4.1 + global average pool + fc.

Batch norm (torch defaults: momentum 0.1, i.e. Flax momentum 0.9, epsilon 1e-5) follows the module's
train/eval mode, or an explicit ``use_running_average`` argument to ``__call__``; an optional
``mask`` [N] bool restricts the batch statistics to the rows that are real data (padding rows are
still computed but do not move the statistics). One difference from torch: Flax updates the running
variance with the biased batch variance, torch with the unbiased one (factor n / (n - 1), n = rows x
positions; 2,499 for a REMIND step at 7 x 7). As pure functions
(``cljax.models.pure.Net.of``), G runs in eval mode (running statistics) and F in either mode.

CPU tip: initialising with ``nnx.Rngs(jax.random.key(seed, impl="rbg"))`` compiles the variable
initialisers about 10x faster than the default threefry keys (measured here: 6 s against 65 s on a
busy 2-core machine for width 1/16).
"""

from __future__ import annotations

import functools
import re
from typing import Optional

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

STAGES = ("layer1", "layer2", "layer3", "layer4")
_BLOCKS_PER_STAGE = (2, 2, 2, 2)

_conv_init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # kaiming, fan_out, relu


def _fc_bias_init(fan_in):
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _conv(cin, cout, k, stride, pad, rngs):
  return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                  use_bias=False, kernel_init=_conv_init, rngs=rngs)


def _bn(c, rngs):
  return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, rngs=rngs)


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with a residual connection. [N, H, W, cin] -> [N, H/s, W/s, cout]."""

  def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
    self.conv1 = _conv(cin, cout, 3, stride, 1, rngs)
    self.bn1 = _bn(cout, rngs)
    self.conv2 = _conv(cout, cout, 3, 1, 1, rngs)
    self.bn2 = _bn(cout, rngs)
    if stride != 1 or cin != cout:
      # A list so the parameter paths read downsample/0 (conv) and downsample/1 (bn), as in torch.
      self.downsample = nnx.List([_conv(cin, cout, 1, stride, 0, rngs), _bn(cout, rngs)])
    else:
      self.downsample = nnx.data(None)

  def __call__(self, x, use_running_average: Optional[bool] = None, mask=None):
    """mask: None or [N, 1, 1, 1] bool, the rows batch statistics are computed over."""
    ura = use_running_average
    out = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura, mask=mask))
    out = self.bn2(self.conv2(out), use_running_average=ura, mask=mask)
    identity = x
    if self.downsample is not None:
      identity = self.downsample[1](self.downsample[0](x), use_running_average=ura, mask=mask)
    return nnx.relu(out + identity)


def _split_index(split: str) -> int:
  """Number of residual blocks in G for a split name (0 for "stem", 8 for "layer4")."""
  if split == "stem":
    return 0
  m = re.fullmatch(r"layer([1-4])(?:\.(\d+))?", split)
  if not m:
    raise ValueError(f"split must be 'stem', 'layerK' or 'layerK.i', got {split!r}")
  stage = int(m.group(1)) - 1
  before = sum(_BLOCKS_PER_STAGE[:stage])
  if m.group(2) is None:
    return before + _BLOCKS_PER_STAGE[stage]
  block = int(m.group(2))
  if block >= _BLOCKS_PER_STAGE[stage]:
    raise ValueError(f"{split!r}: layer{stage + 1} has {_BLOCKS_PER_STAGE[stage]} blocks")
  return before + block + 1


def block_names() -> list[str]:
  """Torchvision names of the residual blocks in order: layer1.0, layer1.1, ..., layer4.1."""
  return [f"{s}.{i}" for s, n in zip(STAGES, _BLOCKS_PER_STAGE) for i in range(n)]


class ResNet18(nnx.Module):
  """ResNet-18. [N, H, W, in_channels] float32 -> logits [N, num_classes]."""

  def __init__(self,
               num_classes: int = 1000,
               *,
               width: float = 1.0,
               stem: str = "imagenet",
               in_channels: Optional[int] = None,
               in_shape: Optional[tuple] = None,
               rngs: nnx.Rngs):
    """in_channels: C of [N, H, W, C] inputs; None takes it from ``in_shape`` [H, W, C] (what
    ``cljax.models.create`` passes), else 3."""
    if stem not in ("imagenet", "small"):
      raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
    if in_shape is not None:
      if len(in_shape) != 3:
        raise ValueError(f"resnet18 needs image inputs [H, W, C]; got example shape "
                         f"{tuple(in_shape)}")
      if in_channels is not None and in_channels != in_shape[-1]:
        raise ValueError(f"in_channels={in_channels} but inputs have {in_shape[-1]} channels")
      in_channels = int(in_shape[-1])
    in_channels = 3 if in_channels is None else int(in_channels)
    rngs = _fast_rngs(rngs)
    chans = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
    self.stem = stem
    self.channels = tuple(chans)
    if stem == "imagenet":
      self.conv1 = _conv(in_channels, chans[0], 7, 2, 3, rngs)
    else:
      self.conv1 = _conv(in_channels, chans[0], 3, 1, 1, rngs)
    self.bn1 = _bn(chans[0], rngs)
    cin = chans[0]
    for s, (name, cout) in enumerate(zip(STAGES, chans)):
      stride = 1 if s == 0 else 2
      blocks = []
      for i in range(_BLOCKS_PER_STAGE[s]):
        blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1, rngs=rngs))
        cin = cout
      setattr(self, name, nnx.List(blocks))
    self.fc = nnx.Linear(chans[3], num_classes, kernel_init=jax.nn.initializers.variance_scaling(
        1.0 / 3.0, "fan_in", "uniform"), bias_init=_fc_bias_init(chans[3]), rngs=rngs)

  def blocks(self) -> list[BasicBlock]:
    """The 8 residual blocks in order (layer1.0 .. layer4.1)."""
    return [b for name in STAGES for b in getattr(self, name)]

  def features(self, x, use_running_average: Optional[bool] = None, mask=None):
    """Globally average-pooled layer4 output [N, 512 * width] (the input of ``fc``)."""
    m = _bn_mask(mask)
    x = _stem(self, x, use_running_average, m)
    for b in self.blocks():
      x = b(x, use_running_average, m)
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, x, use_running_average: Optional[bool] = None, mask=None):
    return self.fc(self.features(x, use_running_average, mask))


def _fast_rngs(rngs: nnx.Rngs) -> nnx.Rngs:
  """An rbg-keyed copy of ``rngs`` when its params stream uses threefry keys.

  Why: eager initialisation compiles the key's random-bits kernel once per parameter shape;
  with threefry that took ~65 s on this 2-core machine for ResNet-18, with rbg ~6 s. The rbg key
  is drawn from the given stream, so the same key still gives the same model.
  """
  streams = [v for k, v in vars(rngs).items() if isinstance(v, nnx.RngStream)]
  if all(str(jax.random.key_impl(st.key.get_value())) == "rbg" for st in streams):
    return rngs  # already fast (and unchanged, so existing seeds give the same models)
  bits = jax.random.bits(rngs.params(), (4,), jnp.uint32)
  return nnx.Rngs(params=jax.random.wrap_key_data(bits, impl="rbg"))


def _bn_mask(mask):
  # Rows -> a mask broadcastable over [N, H, W, C] for nnx.BatchNorm.
  return None if mask is None else jnp.asarray(mask, bool).reshape(-1, 1, 1, 1)


def _stem(mod, x, use_running_average, mask):
  x = nnx.relu(mod.bn1(mod.conv1(x), use_running_average=use_running_average, mask=mask))
  if mod.stem == "imagenet":
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  return x


class ResNetTrunk(nnx.Module):
  """G: stem and the first blocks of a ResNet18, sharing its variables. -> [N, h, w, c] features."""

  def __init__(self, model: ResNet18, split: str):
    n = _split_index(split)
    self.stem = model.stem
    self.conv1 = model.conv1
    self.bn1 = model.bn1
    self.blocks = nnx.List(model.blocks()[:n])
    self.block_names = tuple(block_names()[:n])

  def __call__(self, x, use_running_average: Optional[bool] = None, mask=None):
    m = _bn_mask(mask)
    x = _stem(self, x, use_running_average, m)
    for b in self.blocks:
      x = b(x, use_running_average, m)
    return x


class ResNetHead(nnx.Module):
  """F: the remaining blocks, global average pool and fc, sharing the model's variables.

  Its parameter paths are ``blocks/<j>/...`` and ``fc/...``; ``block_names`` holds the torchvision
  name of each block (e.g. ("layer4.1",) for REMIND's split).
  """

  def __init__(self, model: ResNet18, split: str):
    n = _split_index(split)
    self.blocks = nnx.List(model.blocks()[n:])
    self.block_names = tuple(block_names()[n:])
    self.fc = model.fc

  def __call__(self, x, use_running_average: Optional[bool] = None, mask=None):
    m = _bn_mask(mask)
    for b in self.blocks:
      x = b(x, use_running_average, m)
    return self.fc(jnp.mean(x, axis=(1, 2)))


def split_model(model: ResNet18, split: str = "layer4.0") -> tuple[ResNetTrunk, ResNetHead]:
  """(G, F) modules sharing ``model``'s variables: F(G(x)) equals model(x)."""
  return ResNetTrunk(model, split), ResNetHead(model, split)


# --- convolution with a matmul kernel gradient (fast inside loops on CPU) ----------------------


def _conv_nhwc(x, k, strides, padding):
  return jax.lax.conv_general_dilated(x, k, strides, padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_mm_grad(x, k, strides, padding):
  return _conv_nhwc(x, k, strides, padding)


def _conv_mm_grad_fwd(x, k, strides, padding):
  return _conv_nhwc(x, k, strides, padding), (x, k)


def _conv_mm_grad_bwd(strides, padding, res, dy):
  x, k = res
  _, vjp_x = jax.vjp(lambda a: _conv_nhwc(a, k, strides, padding), x)
  (dx,) = vjp_x(dy)
  kh, kw, cin, cout = k.shape
  _, ho, wo, _ = dy.shape
  xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  sh, sw = strides
  # dK[a, b] = sum over (n, i, j) of x_pad[n, a + sh * i, b + sw * j, :] outer dy[n, i, j, :]:
  # one plain matmul per kernel tap.
  taps = [jnp.einsum("nhwc,nhwo->co",
                     xp[:, a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw, :], dy)
          for a in range(kh) for b in range(kw)]
  dk = jnp.stack(taps).reshape(kh, kw, cin, cout).astype(k.dtype)
  return dx, dk


_conv_mm_grad.defvjp(_conv_mm_grad_fwd, _conv_mm_grad_bwd)


def conv_matmul_kernel_grad(lhs, rhs, window_strides, padding, lhs_dilation=None,
                            rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                            **kwargs):
  """Drop-in for ``lax.conv_general_dilated`` (the ``conv_general_dilated`` hook of nnx.Conv)
  whose kernel gradient is computed as one matmul per kernel tap.

  Why: XLA:CPU runs the kernel-gradient convolution about 10x slower inside a loop body (scan,
  cond) than at top level (measured here; jax-ml/jax#12868 is the same family), and REMIND takes
  its SGD steps inside a scan. Values and gradients equal the plain convolution's up to rounding.
  Only 2-D NHWC/HWIO convolutions with explicit padding, no dilation and one feature group take
  this path; anything else falls through to ``lax.conv_general_dilated``.
  """
  plain = (isinstance(padding, str) or rhs.ndim != 4 or feature_group_count != 1 or
           any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())) or
           kwargs.get("preferred_element_type") is not None)
  if not plain:
    want = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    got = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    plain = got != want
  if plain:
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        **kwargs)
  pad = tuple(tuple(int(v) for v in p) for p in padding)
  return _conv_mm_grad(lhs, rhs, tuple(int(v) for v in window_strides), pad)


def use_matmul_kernel_grad(module: nnx.Module) -> nnx.Module:
  """Switches every nnx.Conv inside ``module`` (in place) to ``conv_matmul_kernel_grad``."""
  for _, sub in nnx.iter_modules(module):
    if isinstance(sub, nnx.Conv):
      sub.conv_general_dilated = conv_matmul_kernel_grad
  return module


# --- torchvision state dicts -------------------------------------------------------------------

_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}


def torch_key(path: tuple) -> str:
  """Torchvision state-dict key of a ResNet18 variable path, e.g.
  ('layer2', 0, 'downsample', 1, 'scale') -> 'layer2.0.downsample.1.weight'."""
  *mods, leaf = [str(p) for p in path]
  return ".".join(mods + [_TORCH_LEAF[leaf]])


def _to_torch_layout(path, value):
  if path[-1] == "kernel" and value.ndim == 4:  # conv HWIO -> OIHW
    return np.transpose(value, (3, 2, 0, 1))
  if path[-1] == "kernel" and value.ndim == 2:  # linear [in, out] -> [out, in]
    return value.T
  return value


def _from_torch_layout(path, value):
  if path[-1] == "kernel" and value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if path[-1] == "kernel" and value.ndim == 2:
    return value.T
  return value


def to_torch_state_dict(model: ResNet18) -> dict[str, np.ndarray]:
  """The model's variables as a torchvision-style state dict of numpy arrays (NCHW layouts)."""
  flat = nnx.to_flat_state(nnx.state(model))
  return {torch_key(path): _to_torch_layout(path, np.asarray(var.get_value()))
          for path, var in flat}


def load_torch_state_dict(model: ResNet18, state_dict: dict) -> None:
  """Copies a torchvision ResNet-18 state dict (numpy arrays or anything np.asarray accepts) into
  ``model`` in place. ``num_batches_tracked`` entries are ignored.

  Raises:
    KeyError: a model variable has no entry; ValueError: a shape disagrees.
  """
  state = nnx.state(model)
  for path, var in nnx.to_flat_state(state):
    key = torch_key(path)
    if key not in state_dict:
      raise KeyError(f"state dict has no {key!r}")
    value = _from_torch_layout(path, np.asarray(state_dict[key], np.float32))
    if value.shape != var.get_value().shape:
      raise ValueError(f"{key}: shape {value.shape} does not fit {var.get_value().shape}")
    var.set_value(jnp.asarray(value))
