"""Tests for cljax/ops/mixup.py: timm's batch Mixup/CutMix, label smoothing and the soft CE,
against NumPy written from timm/data/mixup.py (``mixup_target``, ``rand_bbox``,
``cutmix_bbox_and_lam``, ``_mix_batch``) and DietCL's ``SoftTargetCrossEntropy``
(wx-zhang/continual-learning-on-a-diet ``trainer/base.py`` lines 19-39)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.ops import mixup

K = 10
SEEN = np.zeros(K, bool)
SEEN[[0, 2, 3, 5, 7, 8]] = True  # C = 6 classes seen


def _batch(b=6, h=5, w=7, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, h, w, 2)).astype(np.float32)
  y = rng.choice(np.flatnonzero(SEEN), b).astype(np.int32)
  return x, y


def _np_targets(y, lam, smoothing=0.1):
  """timm mixup_target over the C seen classes (columns of unseen classes 0)."""
  c = SEEN.sum()
  off, on = smoothing / c, 1 - smoothing + smoothing / c
  t = np.where(SEEN, off, 0.0)[None].repeat(len(y), 0)
  t[np.arange(len(y)), y] = on
  return lam * t + (1 - lam) * t[::-1]


_mix = jax.jit(functools.partial(mixup.mixup_cutmix),
               static_argnames=("mixup_alpha", "cutmix_alpha", "prob", "switch_prob",
                                "smoothing"))


def test_mixup_mixes_images_and_labels_as_timm():
  x, y = _batch()
  m = _mix(jax.random.key(0), x, y, jnp.ones(6), jnp.asarray(SEEN), switch_prob=0.0)
  lam = float(m.lam)
  assert not bool(m.cutmix) and 0.0 < lam < 1.0
  np.testing.assert_allclose(m.x, lam * x + (1 - lam) * x[::-1], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(m.targets, _np_targets(y, lam), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(m.targets).sum(1), 1.0, rtol=1e-6)


def test_cutmix_box_and_corrected_lam_by_hand():
  h, w = 5, 7
  for seed in range(20):
    key = jax.random.key(seed)
    lam = float(jax.random.uniform(jax.random.fold_in(key, 1)))
    box, lam_c = mixup.cutmix_box(key, h, w, jnp.float32(lam))
    # timm rand_bbox with the same centre draws (the function's own key split).
    ky, kx = jax.random.split(key)
    cy, cx = int(jax.random.randint(ky, (), 0, h)), int(jax.random.randint(kx, (), 0, w))
    cut_h, cut_w = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
    yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
    xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
    np.testing.assert_array_equal(box, [yl, yh, xl, xh])
    assert float(lam_c) == pytest.approx(1 - (yh - yl) * (xh - xl) / (h * w), abs=1e-7)
  # The whole batch: the box comes from the partner, the rest stays; targets use the corrected λ.
  x, y = _batch(h=h, w=w, seed=1)
  m = _mix(jax.random.key(3), x, y, jnp.ones(6), jnp.asarray(SEEN), switch_prob=1.0)
  assert bool(m.cutmix)
  yl, yh, xl, xh = np.asarray(m.box)
  want = x.copy()
  want[:, yl:yh, xl:xh] = x[::-1][:, yl:yh, xl:xh]
  np.testing.assert_array_equal(m.x, want)
  assert float(m.lam) == pytest.approx(1 - (yh - yl) * (xh - xl) / (h * w), abs=1e-7)
  np.testing.assert_allclose(m.targets, _np_targets(y, float(m.lam)), rtol=1e-6, atol=1e-7)


def test_odd_batches_drop_the_last_row_and_rows_limit_the_batch():
  x, y = _batch(b=5)
  m = _mix(jax.random.key(1), x, y, jnp.ones(5), jnp.asarray(SEEN), switch_prob=0.0)
  lam = float(m.lam)
  np.testing.assert_array_equal(m.weight, [1, 1, 1, 1, 0])  # the reference drops it
  np.testing.assert_allclose(m.x[:4], lam * x[:4] + (1 - lam) * x[:4][::-1], rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(m.targets[:4], _np_targets(y[:4], lam), rtol=1e-6, atol=1e-7)
  # rows=3 of 6 (traced): rows 0 and 1 are the batch, row 2 is dropped (odd), 3-5 untouched.
  x, y = _batch(b=6)
  m = jax.jit(lambda r: mixup.mixup_cutmix(jax.random.key(2), x, y, jnp.ones(6),
                                           jnp.asarray(SEEN), switch_prob=0.0, rows=r))(3)
  lam = float(m.lam)
  np.testing.assert_array_equal(m.weight, [1, 1, 0, 0, 0, 0])
  np.testing.assert_allclose(m.x[:2], lam * x[:2] + (1 - lam) * x[1::-1], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(m.x[2:], x[2:])


def test_lam_distribution_switch_and_prob():
  x, y = _batch()
  keys = jax.random.split(jax.random.key(7), 4000)
  f = jax.jit(jax.vmap(lambda k: mixup.mixup_cutmix(k, x, y, jnp.ones(6), jnp.asarray(SEEN))))
  m = f(keys)
  cut = np.asarray(m.cutmix)
  assert abs(cut.mean() - 0.5) < 0.03  # switch_prob 0.5
  lam_mix = np.asarray(m.lam)[~cut]  # Beta(0.8, 0.8): mean 1/2, variance 1 / (4 (2·0.8 + 1))
  assert abs(lam_mix.mean() - 0.5) < 0.02 and abs(lam_mix.var() - 1 / 10.4) < 0.01
  off = jax.jit(lambda k: mixup.mixup_cutmix(k, x, y, jnp.ones(6), jnp.asarray(SEEN), prob=0.0))
  m0 = off(jax.random.key(0))
  assert float(m0.lam) == 1.0
  np.testing.assert_array_equal(m0.x, x)


def test_soft_cross_entropy_by_hand():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(4, K)).astype(np.float32)
  t = np.abs(rng.normal(size=(4, K))).astype(np.float32) * SEEN
  t /= t.sum(1, keepdims=True)
  w = np.array([1.0, 0.5, 0.0, 2.0], np.float32)
  step = np.zeros(K, bool)
  step[[3, 5]] = True
  batch_cls = np.zeros(K, bool)
  batch_cls[[0, 3, 8]] = True

  def ref(allowed, keep):
    z = np.where(allowed, logits.astype(np.float64), -np.inf)
    logp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(
        1, keepdims=True)
    per = -np.where(keep, t * np.where(allowed, logp, 0.0), 0.0).sum(1)
    return (per * w).sum() / w.sum()

  # Class-incremental L_m: logits and targets sliced to the step's classes.
  got = mixup.soft_cross_entropy(logits, t, w, jnp.asarray(step))
  assert float(got) == pytest.approx(ref(step, step), rel=1e-5)
  # Time-ordered L_m: softmax over all seen classes, targets of the batch's classes only.
  got = mixup.soft_cross_entropy(logits, t, w, jnp.asarray(SEEN), jnp.asarray(batch_cls))
  assert float(got) == pytest.approx(ref(SEEN, SEEN & batch_cls), rel=1e-5)
  # Old-class logits do not move the class-incremental loss, nor get a gradient.
  bumped = logits.copy()
  bumped[:, ~step] += 7.0
  assert float(mixup.soft_cross_entropy(bumped, t, w, jnp.asarray(step))) == pytest.approx(
      ref(step, step), rel=1e-5)
  g = jax.grad(mixup.soft_cross_entropy)(jnp.asarray(logits), t, w, jnp.asarray(step))
  assert np.all(np.asarray(g)[:, ~step] == 0)
