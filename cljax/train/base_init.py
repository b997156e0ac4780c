"""Base initialisation: a network trained on a base set before the stream starts.

REMIND, Deep SLDA and ExStream start from a network trained on the first classes of the stream
(ImageNet: 100 classes); incremental fine-tuning warm-starts from one; DietCL starts from an
MAE-pretrained ViT. This module holds that training and what learners receive from it:

* ``train_classifier``: supervised training (batch norm in train mode with its running statistics
  kept, sgd/adam/adamw, a step lr schedule, random-crop/flip augmentation ``augment_batch``);
* ``train_mae``: masked-autoencoder pre-training of a ViT on unlabeled images (He et al. 2022);
* ``save_params`` / ``load_params``: orbax checkpoints of a network's params;
* ``BaseInit``: the trained network and its base set, and ``from_config``, which an experiment
  calls to train (or load) it. Learners then get its params (``init_params``), its frozen
  features (``backbone``) or all of it (``base``: REMIND), as declared in the registry.

Both trainers run through the one training loop (``cljax.train.loop.Loop``) with the mini-batch
order drawn on the host from ``key`` (shuffled epochs), so a run is reproducible.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cljax import optim
from cljax.ops.losses import cross_entropy
from cljax.models import vit as vit_lib
from cljax.models.pure import Net
from cljax.train.loop import Loop, Progress, apply_updates, classifier_step

AUGMENTS = ("none", "crop", "crop_flip")
KINDS = ("supervised", "mae")


class Model(NamedTuple):
  """A trained network: its ``cljax.models`` name and options, the ``Net`` and its params."""

  name: str
  kwargs: dict
  net: Net
  params: dict


def augment_batch(key: jax.Array, x: jax.Array, augment: str = "crop",
                  padding: int = 4) -> jax.Array:
  """Random crop with zero padding (and, with "crop_flip", a horizontal flip with p = 1/2).

  x: [B, H, W, C] images; returns [B, H, W, C]. Each row gets its own offset in
  [0, 2 * padding]^2 (torchvision ``RandomCrop(size, padding)``). Zero padding is the background
  of [0, 1]-scaled digits; the flip is off for "crop" because mirrored digits are other shapes.
  """
  if augment not in AUGMENTS:
    raise ValueError(f"unknown augment {augment!r}; valid: {list(AUGMENTS)}")
  if augment == "none":
    return x
  b, h, w, c = x.shape
  k_off, k_flip = jax.random.split(key)
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  off = jax.random.randint(k_off, (b, 2), 0, 2 * padding + 1)
  out = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(xp, off)
  if augment == "crop_flip":
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    out = jnp.where(flip[:, None, None, None], out[:, :, ::-1], out)
  return out


def epoch_order(key: jax.Array, n: int, batch_size: int, steps: int, chunk: int,
                drop_last: bool) -> np.ndarray:
  """Row indices [ceil(steps / chunk) * chunk, batch_size] int32 of ``steps`` mini-batches drawn
  as shuffled epochs over n rows (``drop_last``: an epoch's partial last batch is skipped), padded
  with row 0 to a whole number of chunks (those steps are masked by the loop)."""
  rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
  per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
  rows = []
  while len(rows) < steps:
    perm = rng.permutation(n)
    if not drop_last:
      perm = np.resize(perm, per_epoch * batch_size)
    rows.extend(perm[:per_epoch * batch_size].reshape(per_epoch, batch_size))
  rows = np.asarray(rows[:steps], np.int32)
  pad = (-steps) % chunk
  return np.concatenate([rows, np.zeros((pad, batch_size), np.int32)])


def train_classifier(model: str, x: np.ndarray, y: np.ndarray, num_classes: int, *,
                     key: jax.Array, epochs: float = 5.0, batch_size: int = 64,
                     lr: float = 1e-3, optimizer: str = "adam", momentum: float = 0.9,
                     weight_decay: float = 0.0, lr_milestones: Sequence[float] = (),
                     lr_factor: float = 0.1, augment: str = "none", crop_padding: int = 4,
                     model_kwargs: Optional[dict] = None, chunk: int = 1,
                     log: Optional[Callable[[str], None]] = None) -> Model:
  """Trains ``model`` on x [N, ...] float32, y [N] int for ``epochs`` shuffled epochs.

  Batch-norm models train with batch statistics and keep the running averages in the returned
  params (a pure dict of the whole model state, what ``save_params`` stores); ``Net.apply`` then
  runs in eval mode. ``optimizer``: ``cljax.optim.OPTIMIZERS``; the lr follows
  ``optim.step_schedule`` (milestones as fractions of all steps); ``augment`` (``AUGMENTS``) is
  applied on device per mini-batch. An epoch's partial last mini-batch is dropped. ``chunk``:
  optimizer steps per jitted call (unrolled; 1 keeps ResNet compiles short on CPU).
  """
  x, y = np.asarray(x), np.asarray(y, np.int32)
  if len(x) != len(y) or len(x) == 0:
    raise ValueError(f"train_classifier: {len(x)} inputs and {len(y)} labels")
  if augment not in AUGMENTS:
    raise ValueError(f"unknown augment {augment!r}; valid: {list(AUGMENTS)}")
  if augment != "none" and x.ndim != 4:
    raise ValueError(f"augment={augment!r} needs images [N, H, W, C], got shape {x.shape}")
  k_init, k_order, k_steps = jax.random.split(key, 3)
  kw = dict(model_kwargs or {})
  net = Net.named(model, num_classes, **kw)
  params = net.init(k_init, x.shape[1:])
  bs = min(batch_size, len(x))
  total = max(1, math.ceil(epochs * (len(x) // bs)))
  tx = optim.build(optimizer, optim.step_schedule(lr, total, lr_milestones, lr_factor),
                   momentum=momentum, weight_decay=weight_decay)
  order = epoch_order(k_order, len(x), bs, total, chunk, drop_last=True)

  def step(carry, data, key, i, stop):
    del i, stop
    p, opt = carry
    _, (xb, yb) = data
    xb = augment_batch(key, xb, augment, crop_padding)
    w = jnp.ones((xb.shape[0],), jnp.float32)
    p, opt, loss = classifier_step(net, tx, p, opt, xb, w,
                                   lambda _, logits: cross_entropy(logits, yb, w))
    return (p, opt), loss[None]

  def rows(start):
    idx = order[start:start + chunk]
    return x[idx], y[idx]

  prog = Progress(log, "[base_init]", bs) if log else None
  (params, _), _ = Loop(step, chunk=chunk)((params, tx.init(params)), (), k_steps, total,
                                          per_step=rows, progress=prog)
  return Model(model, kw, net, params)


def train_mae(model: str, x: np.ndarray, num_classes: int, *, key: jax.Array,
              epochs: float = 10.0, batch_size: int = 256, lr: float = 1e-3,
              mask_ratio: float = 0.75, model_kwargs: Optional[dict] = None,
              log: Optional[Callable[[str], None]] = None, weight_decay: float = 0.05,
              warmup_fraction: float = 0.05, norm_pix: bool = True, chunk: int = 8) -> Model:
  """MAE pre-training of ViT ``model`` on images x [N, H, W, C] float32 (labels never read).

  Args:
    model: a ``cljax.models`` ViT (``vit_micro``, ``vit_tiny``, ``vit_small``, ``vit_base``).
    num_classes: K of the head built with the model (untrained here; learners train it).
    key: initialization, shuffling order and masks.
    epochs: passes over x (fractions allowed); steps = ceil(epochs · N / batch_size), >= 1.
    batch_size: images per step (capped at N).
    lr: peak learning rate (not scaled by batch size); linear warmup over ``warmup_fraction`` of
      the steps, then cosine decay to 0 (MAE's schedule).
    mask_ratio, norm_pix: MAE masking ratio (0.75) and per-patch normalised pixel targets.
    model_kwargs: options of the model (``patch``, config overrides such as ``depth``).
    log: progress lines (loss, examples/s, ETA), about 20 per run.
    weight_decay: AdamW (betas 0.9, 0.95) decoupled decay on matrices only.
    chunk: optimizer steps per jitted call (a ``lax.scan``; the ViT has no convolutions).

  Returns:
    ``Model`` whose params (the decoder included) fit every learner of the same model as
    ``init_params``.
  """
  x = np.asarray(x, np.float32)
  if x.ndim != 4 or len(x) == 0:
    raise ValueError(f"train_mae needs images [N, H, W, C] with N >= 1; got shape {x.shape}")
  if model not in tuple(f"vit_{c}" for c in vit_lib.CONFIGS):
    raise ValueError(f"train_mae: model {model!r} has no MAE decoder; valid: "
                     f"{[f'vit_{c}' for c in vit_lib.CONFIGS]}")
  k_init, k_order, k_steps = jax.random.split(key, 3)
  kw = dict(model_kwargs or {})
  net = Net.named(model, num_classes, **kw)
  params = net.init(k_init, x.shape[1:])
  bs = int(min(batch_size, len(x)))
  total = max(1, math.ceil(float(epochs) * len(x) / bs))
  tx = optim.build("adamw", optim.warmup_cosine(lr, total, warmup_fraction), betas=(0.9, 0.95),
                   weight_decay=weight_decay, decay_mask=optim.matrices)
  order = epoch_order(k_order, len(x), bs, total, chunk, drop_last=False)

  def step(carry, data, key, i, stop):
    del i, stop
    p, opt = carry
    images, ids = data
    loss, g = jax.value_and_grad(
        lambda q: net.call(q, images[ids], "mae_loss", key, mask_ratio, norm_pix))(p)
    p, opt = apply_updates(tx, p, opt, g)
    return (p, opt), loss[None]

  prog = Progress(log, f"[mae] {model}", bs) if log else None
  (params, _), _ = Loop(step, chunk=chunk, unroll=False)(
      (params, tx.init(params)), jnp.asarray(x), k_steps, total,
      per_step=lambda start: order[start:start + chunk], progress=prog)
  return Model(model, kw, net, params)


def mae_eval_loss(m: Model, x: np.ndarray, key: jax.Array, mask_ratio: float = 0.75,
                  batch_size: int = 256) -> float:
  """Mean MAE loss of ``m`` on x [N, H, W, C] (fixed masks from ``key``), for checks."""
  f = jax.jit(lambda p, xb, k: m.net.call(p, xb, "mae_loss", k, mask_ratio))
  return float(np.mean([float(f(m.params, jnp.asarray(x[s:s + batch_size]),
                                jax.random.fold_in(key, s)))
                        for s in range(0, len(x), batch_size)]))


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


def accuracy(m: Model, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
  """Top-1 accuracy of ``m`` on x [N, ...], y [N] (eval mode)."""
  f = jax.jit(m.net.apply)
  pred = np.concatenate([np.asarray(f(m.params, x[s:s + batch_size])).argmax(1)
                         for s in range(0, len(x), batch_size)])
  return float((pred == np.asarray(y)).mean())


class BaseInit(NamedTuple):
  """A base-initialised network and the data it was trained on (what learners receive).

  model: the trained ``Model`` (params include batch statistics).
  x: [N, ...] float32 base-set inputs; y: [N] int32 labels (-1 where unlabeled: mae).
  classes: the base classes (sorted), empty for mae.
  kind: "supervised" or "mae"; path: where the checkpoint lies; test_accuracy: on the test
    examples of the base classes (None for mae).
  """

  model: Model
  x: np.ndarray
  y: np.ndarray
  classes: list
  kind: str
  path: str
  test_accuracy: Optional[float]

  @property
  def net(self) -> Net:
    return self.model.net

  @property
  def params(self) -> dict:
    return self.model.params

  def backbone(self) -> Callable[[jax.Array], jax.Array]:
    """Frozen features: a pure x -> [B, d] function (eval mode, params closed over)."""
    net, params = self.model.net, self.model.params
    return lambda x: net.features(params, x)


def _base_data(config, stream, load_data: Callable):
  """(x [N, ...] float32, y [N] int32, classes, test x, test y) of the base set."""
  b = config.base_init
  k = stream.dataset.num_classes
  if b.dataset:
    kw = config.dataset_kwargs.to_dict() if b.dataset == config.dataset else {}
    ds = load_data(b.dataset, **kw)
    x, y = ds.train.batch(np.arange(len(ds.train))), np.asarray(ds.train.y, np.int32)
    if tuple(x.shape[1:]) != tuple(stream.dataset.train.example_shape):
      raise ValueError(f"base_init.dataset {b.dataset!r} has inputs of shape {x.shape[1:]}, the "
                       f"stream's are {stream.dataset.train.example_shape}")
    if b.kind == "supervised" and ds.num_classes > k:
      raise ValueError(f"base_init.dataset {b.dataset!r} has {ds.num_classes} classes, the "
                       f"model's head has {k} (the stream's)")
    tx = ds.test.batch(np.arange(len(ds.test)))
    return x, y, sorted(set(y.tolist())), tx, np.asarray(ds.test.y)
  if int(b.classes) > 0:
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


def active(config) -> bool:
  """Whether ``config`` asks for a base initialisation."""
  b = config.base_init
  return int(b.classes) > 0 or b.kind == "mae" or bool(b.checkpoint)


def from_config(config, stream, workdir: str, load_data: Callable,
                log: Callable[[str], None] = print, save: bool = True) -> Optional[BaseInit]:
  """The base initialisation ``config.base_init`` asks for, or None when it is off.

  Order: ``base_init.checkpoint`` if set (loaded, never written); else WORKDIR/base_init if it
  exists (an ``experiments/pretrain.py`` run or an earlier run in this workdir); else trained and
  saved there (unless ``save`` is False: a process of a multi-process run other than the
  primary trains the same network, from the same key and data, and does not write it).
  ``load_data(name, **kw)`` loads a ``base_init.dataset``. Bad settings raise ValueError naming
  them.
  """
  if not active(config):
    return None
  b = config.base_init
  x, y, classes, tx, ty = _base_data(config, stream, load_data)
  k = stream.dataset.num_classes
  mkw = config.model_kwargs.to_dict()
  key = jax.random.fold_in(jax.random.key(int(config.seed)), 7)
  path = os.path.abspath(b.checkpoint or os.path.join(workdir, "base_init"))
  if b.checkpoint or os.path.isdir(path):
    if not os.path.isdir(path):
      raise ValueError(f"base_init.checkpoint: no folder at {path}; write one with "
                       "experiments/pretrain.py --workdir=W (it goes to W/base_init)")
    net = Net.named(config.model, k, **mkw)
    like = net.init(key, stream.dataset.train.example_shape)
    try:
      model = Model(config.model, mkw, net, load_params(path, like))
    except (ValueError, KeyError) as e:
      raise ValueError(f"base-init checkpoint {path} does not fit model {config.model!r} with "
                       f"model_kwargs {mkw} ({type(e).__name__}: {str(e)[:300]})") from None
    log(f"[base_init] loaded {path}")
  elif b.kind == "mae":
    log(f"[base_init] mae: {config.model} on {len(x)} unlabeled images")
    t0 = time.perf_counter()
    model = train_mae(config.model, x, k, key=key, epochs=float(b.epochs),
                      batch_size=int(b.batch_size), lr=float(b.lr),
                      mask_ratio=float(b.mask_ratio), model_kwargs=mkw, log=log)
    if save:
      save_params(path, model.params)
    log(f"[base_init] mae done in {time.perf_counter() - t0:.0f}s")
  else:
    if len(x) == 0:
      raise ValueError("base_init: no labelled base examples (set base_init.classes > 0 or "
                       "base_init.dataset)")
    log(f"[base_init] supervised: {config.model} on {len(x)} examples of classes {classes}")
    model = train_classifier(
        config.model, x, y, k, key=key, epochs=float(b.epochs), lr=float(b.lr),
        batch_size=int(b.batch_size), optimizer=str(b.optimizer), momentum=float(b.momentum),
        weight_decay=float(b.weight_decay), lr_milestones=tuple(b.lr_milestones),
        lr_factor=float(b.lr_factor), augment=str(b.augment), crop_padding=int(b.crop_padding),
        model_kwargs=mkw, log=log)
    if save:
      save_params(path, model.params)
  acc = None
  if b.kind == "supervised" and tx is not None and len(tx):
    acc = accuracy(model, tx, ty)
    log(f"[base_init] {config.model} trained on {len(x)} examples of classes {classes}: "
        f"test accuracy {acc:.4f} on those classes ({len(tx)} test examples)")
  return BaseInit(model, x, y, classes, str(b.kind), path, acc)


def inputs_for(base: Optional[BaseInit]) -> dict:
  """What a base initialisation offers learners (``cljax.learners.registry.INPUTS``)."""
  if base is None:
    return {}
  return {"init_params": base.params, "backbone": base.backbone(), "base": base}
