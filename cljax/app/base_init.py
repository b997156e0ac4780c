"""Base initialisation in a run: train (or load) the network the settings ask for, save it.

The training itself is ``cljax.train.pretrain`` (supervised or MAE); this module decides where the
base set comes from, whether a checkpoint is loaded or written. It reads only its typed settings
(``cljax.app.settings.BaseInitSettings``), never the config.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from cljax.models.pure import Net
from cljax.train.pretrain import BaseInit, Model, accuracy, train_classifier, train_mae


def save_params(path: str, params) -> None:
  """Writes ``params`` (a pytree of arrays) to the orbax checkpoint folder ``path``."""
  with ocp.StandardCheckpointer() as ck:
    ck.save(os.path.abspath(path), params)


def load_params(path: str, like) -> dict:
  """Restores parameters saved by ``save_params`` into the structure of ``like``."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no base-init checkpoint at {path}")
  with ocp.StandardCheckpointer() as ck:
    return ck.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, like))


def _same_data(ds, other) -> bool:
  """Whether data sets ``ds`` and ``other`` are the same (name and training set size)."""
  return ds.name == other.name and len(ds.train) == len(other.train)


def _base_data(b, stream, load_data: Callable):
  """(x [N, ...] float32, y [N] int32, classes, test x, test y) of the base set of settings ``b``
  (``BaseInitSettings``). A ``b.dataset`` that is the stream's own data set gives its training
  images the stream does not use (in-domain, disjoint: the stream's images arrive over time, a
  base set holding them would leak the future)."""
  k = stream.dataset.num_classes
  if b.dataset:
    ds = load_data(b.dataset, **dict(b.dataset_kwargs))
    keep = np.arange(len(ds.train))
    if _same_data(ds, stream.dataset):  # in-domain: never the images the stream will bring
      keep = np.setdiff1d(keep, np.concatenate([np.asarray(s) for s in stream.steps]))
      if not len(keep):
        raise ValueError(f"base_init.dataset {b.dataset!r} is the stream's own data set and the "
                         "stream uses every training image: no disjoint base images are left "
                         "(cap stream.max_examples_per_step, or name another data set)")
    x, y = ds.train.batch(keep), np.asarray(ds.train.y, np.int32)[keep]
    if tuple(x.shape[1:]) != tuple(stream.dataset.train.example_shape):
      raise ValueError(f"base_init.dataset {b.dataset!r} has inputs of shape {x.shape[1:]}, the "
                       f"stream's are {stream.dataset.train.example_shape}")
    if b.kind == "supervised" and ds.num_classes > k:
      raise ValueError(f"base_init.dataset {b.dataset!r} has {ds.num_classes} classes, the "
                       f"model's head has {k} (the stream's)")
    tx = ds.test.batch(np.arange(len(ds.test)))
    return x, y, sorted(set(y.tolist())), tx, np.asarray(ds.test.y)
  if b.classes > 0:
    lab = stream.labeled[0]
    x = stream.dataset.train.batch(stream.steps[0][lab])
    y = np.asarray(stream.labels[0][lab], np.int32)
    t = stream.test_index[0]
    return (x, y, stream.tasks[0].tolist(), stream.dataset.test.batch(t),
            np.asarray(stream.dataset.test.y[t]))
  train = stream.dataset.train
  if b.kind == "mae":  # no base classes: every training image of the stream, labels unused
    x = train.batch(np.arange(len(train)))
  else:  # a checkpoint without a base set
    x = np.zeros((0, *train.example_shape), np.float32)
  return x, np.full((len(x),), -1, np.int32), [], None, None


def build(b, stream, workdir: str, load_data: Callable, log: Callable[[str], None] = print,
          save: bool = True) -> Optional[BaseInit]:
  """The base initialisation settings ``b`` (``cljax.app.settings.BaseInitSettings``) ask for,
  or None when they ask for none (``b.active`` False).

  Order: ``b.checkpoint`` if set (loaded, never written); else WORKDIR/base_init if it exists (an
  ``experiments/pretrain.py`` run or an earlier run in this workdir); else trained and saved
  there (unless ``save`` is False: a process of a multi-process run other than the primary trains
  the same network, from the same key and data, and does not write it). ``load_data(name, **kw)``
  loads ``b.dataset``. Bad settings raise ValueError naming them.
  """
  if not b.active:
    return None
  x, y, classes, tx, ty = _base_data(b, stream, load_data)
  k = stream.dataset.num_classes
  mkw = dict(b.model_kwargs)
  key = jax.random.fold_in(jax.random.key(b.seed), 7)
  path = os.path.abspath(b.checkpoint or os.path.join(workdir, "base_init"))
  if b.checkpoint or os.path.isdir(path):
    if not os.path.isdir(path):
      raise ValueError(f"base_init.checkpoint: no folder at {path}; write one with "
                       "experiments/pretrain.py --workdir=W (it goes to W/base_init)")
    net = Net.named(b.model, k, **mkw)
    like = net.init(key, stream.dataset.train.example_shape)
    try:
      model = Model(b.model, mkw, net, load_params(path, like))
    except (ValueError, KeyError) as e:
      raise ValueError(f"base-init checkpoint {path} does not fit model {b.model!r} with "
                       f"model_kwargs {mkw} ({type(e).__name__}: {str(e)[:300]})") from None
    log(f"[base_init] loaded {path}")
  elif b.kind == "mae":
    log(f"[base_init] mae: {b.model} on {len(x)} unlabeled images")
    t0 = time.perf_counter()
    model = train_mae(b.model, x, k, key=key, epochs=b.epochs, batch_size=b.batch_size, lr=b.lr,
                      mask_ratio=b.mask_ratio, model_kwargs=mkw, log=log)
    if save:
      save_params(path, model.params)
    log(f"[base_init] mae done in {time.perf_counter() - t0:.0f}s")
  else:
    if len(x) == 0:
      raise ValueError("base_init: no labelled base examples (set base_init.classes > 0 or "
                       "base_init.dataset)")
    log(f"[base_init] supervised: {b.model} on {len(x)} examples of classes {classes}")
    model = train_classifier(
        b.model, x, y, k, key=key, epochs=b.epochs, lr=b.lr, batch_size=b.batch_size,
        optimizer=b.optimizer, momentum=b.momentum, weight_decay=b.weight_decay,
        lr_milestones=tuple(b.lr_milestones), lr_factor=b.lr_factor, augment=b.augment,
        crop_padding=b.crop_padding, model_kwargs=mkw, log=log)
    if save:
      save_params(path, model.params)
  acc = None
  if b.kind == "supervised" and tx is not None and len(tx):
    acc = accuracy(model, tx, ty)
    log(f"[base_init] {b.model} trained on {len(x)} examples of classes {classes}: "
        f"test accuracy {acc:.4f} on those classes ({len(tx)} test examples)")
  return BaseInit(model, x, y, classes, b.kind, path, acc)
