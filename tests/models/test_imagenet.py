"""Pretrained networks: real EfficientNet-Lite0 weights classify a real photo; ResNet-18 from a
torchvision-style state dict on disk; G/F splits; the registry entries."""

import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax.models
from cljax.models import efficientnet
from cljax.models import imagenet
from cljax.models import resnet
from cljax.models import torch_pickle
from cljax.models.pure import Net
from tests.models import torch_files

ESPRESSO = 967  # ImageNet-1k class index of "espresso" (968 is "cup", 504 "coffee mug")


@pytest.fixture(scope="module")
def lite0():
  try:
    imagenet.efficientnet_lite0_path()
  except imagenet.PretrainedError as e:
    pytest.skip(str(e))
  return cljax.models.pretrained("efficientnet_lite0")


def coffee() -> np.ndarray:
  """scikit-image's coffee photo (400 x 600 RGB, CC0) as float32 in [0, 1], read from the
  package's data folder."""
  skimage = pytest.importorskip("skimage", reason="scikit-image ships the coffee photo")
  from PIL import Image  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(skimage.__file__), "data", "coffee.png")
  return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


@pytest.mark.slow  # several seconds: the full suite runs it
def test_coffee_photo_is_espresso(lite0):
  img = coffee()
  h, w, _ = img.shape
  s = min(h, w)
  square = img[(h - s) // 2:(h + s) // 2, (w - s) // 2:(w + s) // 2]  # centre crop, then resized
  net = Net.of(lite0)
  logits = np.asarray(jax.jit(net.apply)(net.fixed_params, jnp.asarray(square[None])))
  assert logits.shape == (1, 1000)
  probs = np.asarray(jax.nn.softmax(logits[0]))
  assert int(probs.argmax()) == ESPRESSO, np.argsort(-probs)[:5]
  assert probs[ESPRESSO] > 0.5
  # features are the input of the classifier: logits = features @ W + b
  feats = np.asarray(jax.jit(net.features)(net.fixed_params, jnp.asarray(square[None])))
  assert feats.shape == (1, 1280)
  fc = lite0.net.fc
  np.testing.assert_allclose(feats @ np.asarray(fc.kernel.get_value()) + np.asarray(
      fc.bias.get_value()), logits, rtol=1e-4, atol=1e-4)


def _centre_square(img: np.ndarray) -> np.ndarray:
  h, w, _ = img.shape
  s = min(h, w)
  return img[(h - s) // 2:(h + s) // 2, (w - s) // 2:(w + s) // 2]


@pytest.mark.slow  # 33 s: two 224 px compiles of the full network
def test_direct_call_as_documented_predicts_sklearn_photos(lite0):
  # The documented way, no Net: model(images), model.features(images), on scikit-learn's two
  # bundled photos (a palace in China, a daisy), one image per call and both together.
  import sklearn.datasets  # pylint: disable=import-outside-toplevel
  photos = [_centre_square(np.asarray(im, np.float32) / 255.0)
            for im in sklearn.datasets.load_sample_images().images]
  batch = jnp.asarray(np.stack(photos))
  palace, daisy = 698, 985
  for i, want in ((0, palace), (1, daisy)):
    logits = np.asarray(lite0(batch[i:i + 1]))
    assert int(logits.argmax()) == want, np.argsort(-logits[0])[:5]
  both = np.asarray(lite0(batch))
  assert both.argmax(1).tolist() == [palace, daisy]
  net = Net.of(lite0)  # the pure functions agree with the direct call
  np.testing.assert_allclose(both, np.asarray(net.apply(net.fixed_params, batch)), rtol=1e-4,
                             atol=1e-3)
  feats = np.asarray(lite0.features(batch))
  np.testing.assert_allclose(feats, np.asarray(net.features(net.fixed_params, batch)),
                             rtol=1e-4, atol=1e-3)
  training = cljax.models.pretrained("efficientnet_lite0", training=True)
  assert int(np.asarray(training(batch[:1])).argmax()) != palace  # batch statistics of one image


@pytest.mark.slow
def test_preprocessing_and_split(lite0):
  x = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype(np.float32)
  small = imagenet.Pretrained(lite0.net, name="efficientnet_lite0", resolution=64,
                              norm=imagenet.LITE0_NORM, weights_sha256=lite0.weights_sha256)
  pre = np.asarray(small.preprocess(jnp.asarray(x)))
  # grayscale repeated to RGB, resized to 64 px, (pixel - 127) / 128 in 0..255 units
  up = np.asarray(jax.image.resize(jnp.asarray(x), (2, 64, 64, 1), "bilinear"))
  np.testing.assert_allclose(pre, np.repeat((up * 255 - 127) / 128, 3, -1), atol=1e-5)
  with pytest.raises(ValueError, match=r"\[B, H, W, 1 or 3\]"):
    small.preprocess(jnp.zeros((2, 28, 28)))
  # F(G(x)) == the whole network, and G's output has the shape split_shape says
  g, f = (Net.of(m) for m in efficientnet.split_model(lite0.net, "blocks.10"))
  maps = jax.jit(g.apply)(g.fixed_params, jnp.asarray(pre))
  assert maps.shape[1:] == efficientnet.split_shape("blocks.10", 64) == (4, 4, 112)
  whole = Net.of(small)
  np.testing.assert_allclose(np.asarray(jax.jit(f.apply)(f.fixed_params, maps)),
                             np.asarray(jax.jit(whole.apply)(whole.fixed_params, jnp.asarray(x))),
                             rtol=1e-4, atol=1e-4)
  trunk = Net.of(imagenet.PretrainedTrunk(small, "blocks.10"))
  np.testing.assert_allclose(np.asarray(jax.jit(trunk.apply)(trunk.fixed_params, jnp.asarray(x))),
                             np.asarray(maps), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_registry_builds_pretrained_head_with_new_classes(lite0):
  net = Net.named("efficientnet_lite0_head", 10, split="blocks.10")
  params = net.init(jax.random.key(1), (4, 4, 112))
  flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  # the remaining blocks carry the pretrained weights; the classifier is new, 10 classes
  head = efficientnet.Head(lite0.net, "blocks.10")
  ref = nnx.to_pure_dict(nnx.state(head))
  np.testing.assert_array_equal(params["blocks"][0]["depthwise_conv"]["kernel"],
                                ref["blocks"][0]["depthwise_conv"]["kernel"])
  assert params["fc"]["kernel"].shape == (1280, 10)
  assert len(flat) == len(jax.tree.leaves(ref))
  logits, _ = jax.jit(net.apply_train)(params, jnp.ones((3, 4, 4, 112)))  # train mode
  assert logits.shape == (3, 10)
  with pytest.raises(ValueError, match=r"maps \[h, w, 112\]"):
    Net.named("efficientnet_lite0_head", 10).init(jax.random.key(0), (4, 4, 80))


def random_torchvision_resnet18(seed=0) -> dict:
  """A state dict with torchvision's resnet18 names and shapes (OIHW kernels, [out, in] fc)."""
  model = nnx.eval_shape(lambda: resnet.ResNet18(1000, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  sd = {}
  for path, var in nnx.to_flat_state(nnx.state(model)):
    shape = var.get_value().shape
    if path[-1] == "kernel":
      shape = shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
    v = rng.normal(scale=0.05, size=shape).astype(np.float32)
    if path[-1] == "var":
      v = np.abs(v) + 0.5
    sd[resnet.torch_key(path)] = v
    if path[-1] == "var":
      sd[resnet.torch_key(path).replace("running_var", "num_batches_tracked")] = np.asarray(
          10, np.int64)
  return sd


@pytest.mark.slow
def test_resnet18_from_a_torchvision_state_dict_on_disk(tmp_path):
  sd = random_torchvision_resnet18()
  path = tmp_path / "resnet18-test.pth"
  torch_files.write_zip(path, torch_files.state_dict(sd), name="resnet18-test")
  model = cljax.models.pretrained("resnet18", path=str(path), resolution=64)
  back = resnet.to_torch_state_dict(model.net)
  assert set(back) == {k for k in sd if not k.endswith("num_batches_tracked")}
  for k, v in back.items():
    np.testing.assert_array_equal(v, sd[k], err_msg=k)
  assert model.weights_sha256 == imagenet.file_sha256(path)
  # ImageNet normalisation: (x - mean) / std per channel
  x = np.full((1, 64, 64, 3), 0.5, np.float32)
  np.testing.assert_allclose(np.asarray(model.preprocess(jnp.asarray(x)))[0, 0, 0],
                             (0.5 - np.array(imagenet.IMAGENET_NORM[0])) /
                             np.array(imagenet.IMAGENET_NORM[1]), rtol=1e-6)
  # a new 10-class head keeps every other weight
  ten = imagenet.pretrained("resnet18", path=str(path), num_classes=10, key=jax.random.key(0))
  assert ten.net.fc.kernel.get_value().shape == (512, 10)
  np.testing.assert_array_equal(np.asarray(ten.net.conv1.kernel.get_value()),
                                np.asarray(model.net.conv1.kernel.get_value()))


def test_resnet18_bad_files(tmp_path):
  with pytest.raises(imagenet.PretrainedError, match="needs path=FILE"):
    imagenet.pretrained("resnet18")
  sd = random_torchvision_resnet18()
  del sd["layer3.1.bn2.running_mean"]
  torch_files.write_zip(tmp_path / "partial.pth", torch_files.state_dict(sd))
  with pytest.raises(imagenet.PretrainedError, match="layer3.1.bn2.running_mean"):
    imagenet.pretrained("resnet18", path=str(tmp_path / "partial.pth"))
  (tmp_path / "evil.pth").write_bytes(b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85R.")
  with pytest.raises(torch_pickle.TorchFileError, match="refusing global os.system"):
    imagenet.pretrained("resnet18", path=str(tmp_path / "evil.pth"))
  with pytest.raises(FileNotFoundError):
    imagenet.pretrained("resnet18", path=str(tmp_path / "nope.pth"))
  with pytest.raises(imagenet.PretrainedError, match="unknown pretrained network"):
    imagenet.pretrained("vgg16")
