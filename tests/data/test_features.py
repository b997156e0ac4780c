"""The feature cache: exact features, reuse without recomputation, resumption after a kill, keys
that change with what they name, and the ``features`` data set on real digits."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import data
from cljax.data import features
from cljax.data.sources import ArraySource, DataError


def digits_source():
  return data.load("digits").train  # 1,438 real 8x8 digits, uint8 [N, 8, 8, 1]


def pooled_stats(x):
  """A frozen extractor: per-channel mean and max of the image, [B, 2]."""
  return jnp.concatenate([x.mean((1, 2)), x.max((1, 2))], -1)


BB = features.Backbone("stats", "pooled", 8, "0" * 64, pooled_stats)


def never(x):
  raise AssertionError("the backbone ran although the features were cached")


def test_extract_is_exact_and_reused(tmp_path):
  src = digits_source()
  lines = []
  feats = features.extract(BB, src, str(tmp_path), batch_size=100, shard_rows=500,
                           log=lines.append)
  ref = np.asarray(pooled_stats(jnp.asarray(src.batch(np.arange(len(src))))))
  np.testing.assert_allclose(feats, ref, rtol=1e-6)
  assert feats.shape == (len(src), 2) and feats.dtype == np.float32
  assert any("ex/s" in l and "ETA" in l for l in lines)  # progress with rate and ETA
  folder = features.cache_path(BB, src, str(tmp_path))
  assert sorted(f for f in os.listdir(folder) if f.startswith("part-")) == [
      f"part-0000{i}.npy" for i in range(3)]
  # same identity, another function object: read from disk, never run
  again = features.extract(BB._replace(fn=never), src, str(tmp_path), batch_size=100,
                           shard_rows=500, log=None)
  np.testing.assert_array_equal(again, feats)


def test_resumes_after_a_kill(tmp_path):
  src = digits_source()

  class Killed(Exception):
    pass

  def log(line):
    if "step 7/" in line:  # inside the second shard (5 batches of 100 per shard)
      raise Killed()

  with pytest.raises(Killed):
    features.extract(BB, src, str(tmp_path), batch_size=100, shard_rows=500, log=log)
  folder = features.cache_path(BB, src, str(tmp_path))
  assert sorted(f for f in os.listdir(folder) if f.endswith(".npy")) == ["part-00000.npy"]
  (open(os.path.join(folder, "part-00001.npy.tmp.npy"), "wb")).write(b"half a file")
  lines = []
  feats = features.extract(BB, src, str(tmp_path), batch_size=100, shard_rows=500,
                           log=lines.append)
  assert "2 of 3 shards to extract (resuming: 1 done)" in lines[0]
  ref = np.asarray(pooled_stats(jnp.asarray(src.batch(np.arange(len(src))))))
  np.testing.assert_allclose(feats, ref, rtol=1e-6)


def test_cache_keys_name_what_they_hold(tmp_path):
  src = digits_source()
  key = features.cache_path(BB, src, str(tmp_path))
  assert features.cache_path(BB, src, str(tmp_path)) == key
  assert features.cache_path(BB._replace(resolution=16), src, str(tmp_path)) != key
  assert features.cache_path(BB._replace(weights_sha256="1" * 64), src, str(tmp_path)) != key
  assert features.cache_path(BB._replace(layer="blocks.3"), src, str(tmp_path)) != key
  x = src.x.copy()
  x[0, 0, 0, 0] ^= 1  # one pixel of one image
  other = ArraySource("digits/train", x, src.y)
  assert features.cache_path(BB, other, str(tmp_path)) != key
  with pytest.raises(DataError, match=r"takes images \[N, H, W, C\]"):
    features.extract(BB, ArraySource("f", np.zeros((3, 5), np.float32), np.zeros(3, np.int32)),
                     str(tmp_path))


@pytest.mark.slow
def test_features_dataset_of_real_digits_through_efficientnet(tmp_path):
  try:
    from cljax.models import imagenet  # pylint: disable=import-outside-toplevel
    imagenet.efficientnet_lite0_path()
  except ValueError as e:
    pytest.skip(str(e))
  ds = data.load("features", source="digits", layer="pooled", resolution=32,
                 cache_dir=str(tmp_path), batch_size=256, log=None)
  raw = data.load("digits")
  assert ds.train.x.shape == (len(raw.train), 1280) and ds.test.x.shape == (len(raw.test), 1280)
  np.testing.assert_array_equal(ds.train.y, raw.train.y)
  bb = features.backbone("efficientnet_lite0", "pooled", 32)
  direct = np.asarray(jax.jit(bb.fn)(jnp.asarray(raw.test.batch(np.arange(8)))))
  np.testing.assert_allclose(ds.test.x[:8], direct, rtol=1e-4, atol=1e-5)
  # G's maps for REMIND: the network up to block 10, 32 px -> 2x2x112
  maps = data.load("features", source="digits", layer="blocks.10", resolution=32,
                   cache_dir=str(tmp_path), log=None)
  assert maps.train.x.shape == (len(raw.train), 2, 2, 112)
  # the pretrained features carry the classes of real digits: nearest class mean on them reads
  # 0.713 (chance 0.1; ImageNet features of 8 px digits blown up to 32 px are far from their
  # training domain)
  mu = np.stack([ds.train.x[ds.train.y == c].mean(0) for c in range(10)])
  pred = np.argmin(((ds.test.x[:, None] - mu[None]) ** 2).sum(-1), 1)
  assert (pred == ds.test.y).mean() > 0.6
