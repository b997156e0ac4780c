"""A feature cache: a data set through a frozen pretrained backbone, extracted once, kept on disk.

    bb = features.backbone("efficientnet_lite0", layer="pooled", resolution=64)
    feats = features.extract(bb, dataset.train)          # [N, 1280] float32; cached, resumable
    ds = cljax.data.load("features", source="fashion_mnist", layer="pooled", resolution=64)

Deep SLDA, ExStream and REMIND are defined on a frozen backbone, so its outputs never change:
computing them once and streaming the cached arrays (an ordinary ``cljax.data`` ``Dataset`` of
features, ``x`` [N, d] or [N, h, w, c] float32) is both exact and far cheaper than running the
backbone inside every learner on every pass.

* ``layer``: "pooled" (the globally pooled features, EfficientNet-Lite0's 1,280-d input of its
  classifier; Deep SLDA and ExStream) or a split point "blocks.i" / "stem" (the maps of G, the
  network up to block i: REMIND's frozen part; ``cljax.models.efficientnet.split_shape``).
* The cache key is a hash of the backbone name, layer, resolution, the weights file's SHA-256
  and the source's contents (inputs and labels), so a different subset, resolution or weights
  file never reads stale features.
* Extraction runs fixed-size jitted batches (the last one padded: one compile), writes shards
  of ``shard_rows`` rows atomically (a temporary file, then a rename), and logs progress lines
  with examples/s and ETA. Killed midway, the next call keeps the finished shards and extracts
  only the rest.

Layout: ``CACHE/<backbone>-<layer>-<resolution>px-<key>/`` with ``meta.json`` and
``part-00000.npy``, ... (``CACHE`` = ``cache_dir``, else ``$CLJAX_FEATURE_CACHE``, else
``~/.cache/cljax/features``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cljax.data import sources
from cljax.data.sources import ArraySource, DataError, Dataset
from cljax.progress import Progress

VERSION = 1  # bump when the layout or the meaning of a key changes


class Backbone(NamedTuple):
  """A frozen feature extractor and what identifies it in cache keys.

  fn: jittable x [B, H, W, C] float32 in [0, 1] -> features [B, ...] float32 (eval mode).
  """

  name: str
  layer: str
  resolution: int
  weights_sha256: str
  fn: Callable[[jax.Array], jax.Array]

  def describe(self) -> str:
    return f"{self.name} {self.layer}@{self.resolution}px"


def backbone(name: str = "efficientnet_lite0", layer: str = "pooled", resolution: int = 224,
             path: Optional[str] = None) -> Backbone:
  """The pretrained network ``name`` (``cljax.models.pretrained``) as a frozen extractor.

  layer: "pooled" or a split point of the network ("blocks.i" for EfficientNet-Lite0,
    "layerK.i" for ResNet-18).
  path: the weights file (resnet18).
  """
  from cljax import models  # pylint: disable=import-outside-toplevel
  from cljax.models import imagenet  # pylint: disable=import-outside-toplevel
  from cljax.models.pure import Net  # pylint: disable=import-outside-toplevel
  kw = {} if path is None else {"path": path}
  model = models.pretrained(name, resolution=resolution, **kw)
  if layer == "pooled":
    net = Net.of(model, f"{name} (pooled features)")
    params = net.fixed_params
    fn = lambda x: net.features(params, x)
  else:
    net = Net.of(imagenet.PretrainedTrunk(model, layer), f"{name} up to {layer}")
    params = net.fixed_params
    fn = lambda x: net.apply(params, x)
  return Backbone(name, layer, int(resolution), model.weights_sha256, fn)


def source_fingerprint(src: ArraySource) -> str:
  """SHA-256 of a source's inputs and labels (shape, dtype and bytes)."""
  h = hashlib.sha256()
  for a in (src.x, src.y):
    a = np.ascontiguousarray(a)
    h.update(f"{a.shape}{a.dtype}".encode())
    h.update(memoryview(a).cast("B"))
  return h.hexdigest()


def cache_root(cache_dir: Optional[str] = None) -> str:
  return os.path.abspath(cache_dir or os.environ.get("CLJAX_FEATURE_CACHE") or
                         os.path.expanduser("~/.cache/cljax/features"))


def cache_path(bb: Backbone, src: ArraySource, cache_dir: Optional[str] = None) -> str:
  """The folder holding ``src``'s features through ``bb``."""
  ident = {"version": VERSION, "backbone": bb.name, "layer": bb.layer,
           "resolution": bb.resolution, "weights_sha256": bb.weights_sha256,
           "source": source_fingerprint(src)}
  key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(cache_root(cache_dir), f"{bb.name}-{bb.layer}-{bb.resolution}px-{key}")


def _save_atomic(path: str, array: np.ndarray) -> None:
  tmp = path + ".tmp.npy"
  np.save(tmp, array)
  os.replace(tmp, path)  # a killed write leaves only the .tmp file, never a short shard


def extract(bb: Backbone, src: ArraySource, cache_dir: Optional[str] = None,
            batch_size: int = 128, shard_rows: int = 2048,
            log: Optional[Callable[[str], None]] = print) -> np.ndarray:
  """Features of every example of ``src`` through ``bb``: [N, ...] float32, from the cache when
  present, else extracted (resuming from finished shards) and stored.

  batch_size: images per jitted call (fixed; the last batch is padded). shard_rows: rows per
  stored file (a multiple of batch_size is rounded up to one); the unit of resumption.
  """
  if src.x.ndim != 4:
    raise DataError(f"features: {src.name} has inputs of shape {src.x.shape[1:]}; a backbone "
                    "takes images [N, H, W, C]")
  n = len(src)
  bs = int(batch_size)
  shard_rows = max(bs, int(math.ceil(shard_rows / bs)) * bs)
  folder = cache_path(bb, src, cache_dir)
  os.makedirs(folder, exist_ok=True)
  meta_path = os.path.join(folder, "meta.json")
  n_shards = int(math.ceil(n / shard_rows))
  names = [os.path.join(folder, f"part-{i:05d}.npy") for i in range(n_shards)]
  meta = {"backbone": bb.name, "layer": bb.layer, "resolution": bb.resolution,
          "weights_sha256": bb.weights_sha256, "source": src.name, "examples": n,
          "shard_rows": shard_rows, "shards": n_shards, "version": VERSION}
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      old = json.load(f)
    if old.get("shard_rows") != shard_rows:  # another shard size: those shards do not fit
      for p in names + [os.path.join(folder, x) for x in os.listdir(folder)]:
        if os.path.basename(p).startswith("part-") and os.path.exists(p):
          os.remove(p)
  with open(meta_path + ".tmp", "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(meta_path + ".tmp", meta_path)

  todo = [i for i, p in enumerate(names) if not os.path.exists(p)]
  if todo:
    fn = jax.jit(bb.fn)
    total_batches = sum(math.ceil(min(shard_rows, n - i * shard_rows) / bs) for i in todo)
    resumed = n_shards - len(todo)
    if log:
      log(f"[features] {bb.describe()} of {src.name}: {n} examples, {len(todo)} of {n_shards} "
          f"shards to extract" + (f" (resuming: {resumed} done)" if resumed else "") +
          f" -> {folder}")
    prog = Progress(log, f"[features] {bb.describe()}", bs) if log else None
    done = 0
    t0 = time.perf_counter()
    for i in todo:
      lo, hi = i * shard_rows, min((i + 1) * shard_rows, n)
      out = []
      for s in range(lo, hi, bs):
        idx = np.arange(s, min(s + bs, hi))
        x = src.batch(idx)
        if len(idx) < bs:  # pad: every call has the same shape
          x = np.concatenate([x, np.zeros((bs - len(idx), *x.shape[1:]), x.dtype)])
        out.append(np.asarray(fn(jnp.asarray(x)), np.float32)[:len(idx)])
        done += 1
        if prog:
          prog(done, total_batches, None)
      _save_atomic(names[i], np.concatenate(out))
    if log:
      el = time.perf_counter() - t0
      rows = sum(min(shard_rows, n - i * shard_rows) for i in todo)
      log(f"[features] {bb.describe()} of {src.name}: {rows} examples in {el:.1f}s "
          f"({rows / max(el, 1e-9):,.0f} ex/s)")
  parts = [np.load(p) for p in names]
  feats = np.concatenate(parts) if parts else np.zeros((0,), np.float32)
  if feats.shape[0] != n:
    raise DataError(f"features: cache {folder} holds {feats.shape[0]} rows for {n} examples; "
                    "delete the folder to extract again")
  return feats


def dataset(ds: Dataset, bb: Backbone, cache_dir: Optional[str] = None, batch_size: int = 128,
            log: Optional[Callable[[str], None]] = print) -> Dataset:
  """``ds`` with its inputs replaced by their features through backbone ``bb`` (extracted once
  and cached, ``extract``); labels, class names and splits unchanged.

  By name: ``cljax.data.load("features", source=..., layer=...)`` (``cljax.data.catalog``).
  """
  splits = []
  for src in (ds.train, ds.test):
    feats = extract(bb, src, cache_dir, batch_size, log=log)
    splits.append(sources.validate(ArraySource(f"{src.name}|{bb.describe()}", feats, src.y,
                                               src.instance, src.frame, src.time),
                                   ds.num_classes))
  return Dataset(f"{ds.name}|{bb.describe()}", splits[0], splits[1], ds.num_classes,
                 ds.class_names)
