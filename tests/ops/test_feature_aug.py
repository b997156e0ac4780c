"""Tests for cljax.ops.feature_aug: crop boxes, bilinear resize (PyTorch rule), mixup."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.ops import feature_aug as fa

# One compiled program per call shape (op by op, the vmapped crop dispatches for seconds on CPU).
random_resized_crop = jax.jit(fa.random_resized_crop, static_argnames=("scale", "ratio", "tries"))


def _torch_bilinear(crop, out_h, out_w):
  """Reference: PyTorch interpolate(mode="bilinear", align_corners=False), loops in float64."""
  in_h, in_w, c = crop.shape
  out = np.zeros((out_h, out_w, c))

  def src(o, in_size, out_size):
    s = max((o + 0.5) * in_size / out_size - 0.5, 0.0)
    lo = int(s)
    hi = lo + 1 if lo < in_size - 1 else lo
    return lo, hi, s - lo

  for oy in range(out_h):
    y0, y1, ly = src(oy, in_h, out_h)
    for ox in range(out_w):
      x0, x1, lx = src(ox, in_w, out_w)
      out[oy, ox] = ((1 - ly) * ((1 - lx) * crop[y0, x0] + lx * crop[y0, x1]) +
                     ly * ((1 - lx) * crop[y1, x0] + lx * crop[y1, x1]))
  return out


def test_identity_crop_returns_input_exactly():
  x = jax.random.normal(jax.random.key(0), (7, 7, 5))
  np.testing.assert_array_equal(fa.resize_crop(x, jnp.array([0, 0, 7, 7])), x)
  xs = jax.random.normal(jax.random.key(1), (3, 6, 6, 4))
  out = random_resized_crop(jax.random.key(2), xs, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_array_equal(out, xs)


def test_resize_matches_pytorch_bilinear_rule():
  x = np.asarray(jax.random.normal(jax.random.key(3), (7, 7, 3)), np.float64)
  for box in [(0, 0, 2, 3), (1, 2, 5, 4), (3, 3, 4, 4), (0, 1, 7, 6), (2, 0, 3, 7), (6, 6, 1, 1)]:
    got = fa.resize_crop(jnp.asarray(x, jnp.float32), jnp.array(box, jnp.int32))
    t, l, h, w = box
    want = _torch_bilinear(x[t:t + h, l:l + w], 7, 7)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(box))


def test_crop_boxes_lie_inside_the_map_and_follow_scale():
  keys = jax.random.split(jax.random.key(4), 2000)
  boxes = np.asarray(jax.vmap(lambda k: fa.crop_params(k, 7, 7))(keys))
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
  assert (top + h <= 7).all() and (left + w <= 7).all()
  frac = h * w / 49
  assert frac.min() >= 0.2 and frac.max() <= 1.0  # (2/7 .. 1) of the area, up to rounding
  assert len({tuple(b) for b in boxes}) > 20  # many distinct crops
  # On 7x7 an attempt fits unless it rounds past 7: most draws are random crops, not the fallback.
  assert (h * w < 49).mean() > 0.5


def test_fallback_is_torchvision_centre_crop():
  # Aspect ratios of 2..3 never fit a 7x7 map at full area: centre crop of width 7, height 7/2.
  box = np.asarray(fa.crop_params(jax.random.key(5), 7, 7, scale=(1.0, 1.0), ratio=(2.0, 3.0)))
  np.testing.assert_array_equal(box, [1, 0, 4, 7])  # round(3.5) = 4 (half to even), top (7-4)//2


def test_each_map_gets_its_own_crop_and_constant_maps_stay_constant():
  x = jnp.broadcast_to(jax.random.normal(jax.random.key(6), (7, 7, 2)), (8, 7, 7, 2))
  out = np.asarray(random_resized_crop(jax.random.key(7), x))
  assert out.shape == (8, 7, 7, 2)
  assert len({out[i].tobytes() for i in range(8)}) > 1
  const = jnp.full((4, 7, 7, 3), 2.5)
  np.testing.assert_allclose(random_resized_crop(jax.random.key(8), const), 2.5, rtol=1e-6)


def test_mixup_lambda_one_returns_first_half():
  xa = jax.random.normal(jax.random.key(9), (5, 7, 7, 3))
  xb = jax.random.normal(jax.random.key(10), (5, 7, 7, 3))
  np.testing.assert_array_equal(fa.mix(xa, xb, jnp.float32(1.0)), xa)
  mixed, lam = fa.mixup(jax.random.key(11), xa, xb, alpha=0.0)
  assert float(lam) == 1.0
  np.testing.assert_array_equal(mixed, xa)


def test_mixup_uses_one_lambda_from_beta():
  xa = jax.random.normal(jax.random.key(12), (4, 3, 3, 2))
  xb = jax.random.normal(jax.random.key(13), (4, 3, 3, 2))
  mixed, lam = jax.jit(fa.mixup, static_argnums=3)(jax.random.key(14), xa, xb, 0.1)
  assert lam.shape == () and 0.0 <= float(lam) <= 1.0
  np.testing.assert_allclose(mixed, float(lam) * xa + (1 - float(lam)) * xb, rtol=1e-5, atol=1e-6)
  lams = np.asarray(jax.vmap(lambda k: fa.mixup(k, xa, xb, 0.1)[1])(jax.random.split(jax.random.key(15), 4000)))
  assert np.isfinite(lams).all() and lams.min() >= 0 and lams.max() <= 1
  # Beta(0.1, 0.1) is U-shaped and symmetric: most mass near 0 or 1, mean 1/2.
  assert ((lams < 0.1) | (lams > 0.9)).mean() > 0.7
  assert abs(lams.mean() - 0.5) < 0.05


@pytest.mark.slow  # several seconds of compiles: the fast tier stays under 2 min
def test_augment_images_is_crop_then_flip():
  """DietCL's image recipe (torchvision RandomResizedCrop + RandomHorizontalFlip): a full-size
  crop without flip is the identity, p = 1 mirrors every row, and a crop equals resize_crop of
  the box crop_params draws from the same key."""
  aug = jax.jit(fa.augment_images, static_argnames=("scale", "flip"))
  square = jax.random.normal(jax.random.key(3), (4, 6, 6, 2))  # every full-area crop is whole
  np.testing.assert_array_equal(aug(jax.random.key(0), square, scale=(1.0, 1.0), flip=False),
                                square)
  xs = jax.random.normal(jax.random.key(4), (5, 8, 6, 1))
  np.testing.assert_array_equal(fa.hflip(jax.random.key(1), xs, p=1.0), xs[:, :, ::-1])
  np.testing.assert_array_equal(fa.hflip(jax.random.key(1), xs, p=0.0), xs)
  k_crop, _ = jax.random.split(jax.random.key(2))
  boxes = jax.vmap(lambda k: fa.crop_params(k, 8, 6, (0.08, 1.0)))(jax.random.split(k_crop, 5))
  want = jax.vmap(fa.resize_crop)(xs, boxes)
  np.testing.assert_allclose(aug(jax.random.key(2), xs, scale=(0.08, 1.0), flip=False), want,
                             rtol=1e-6, atol=1e-6)
  area = np.asarray(boxes[:, 2] * boxes[:, 3]) / 48
  assert (area <= 1.0).all() and (area > 0).all()
