"""An experiment: several learners compared on one stream, written to WORKDIR/results.json + plots.

The configuration is an ``ml_collections.ConfigDict`` (see ``base_config``); configs in
``experiments/configs/`` start from ``base_config()`` and change what they need.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, NamedTuple, Optional

import ml_collections
import numpy as np

from cljax import data as data_lib
from cljax import learners as learners_lib
from cljax import models as models_lib
from cljax.eval import report
from cljax.learners import _common
from cljax.train import pretrain
from cljax.train import runner

BASE_KINDS = ("supervised", "mae")


def base_config() -> ml_collections.ConfigDict:
  """Every key an experiment understands, with its default."""
  c = ml_collections.ConfigDict()
  c.dataset = "mnist5k"
  c.dataset_kwargs = ml_collections.ConfigDict()  # passed to the data set's loader
  c.seed = 0
  c.stream = ml_collections.ConfigDict(dict(
      ordering="class_incremental", classes_per_step=2, num_steps=5, label_rate=1.0,
      batch_size=32, seed=-1, max_examples_per_step=0, label_noise=0.0))
  # Comma-separated run names; a run name is a learner name, or any name whose hparams entry
  # has a 'learner' key (e.g. er_cb with hparams.er_cb.learner='er', buffer='class_balanced').
  c.learners = "finetune,er,offline"
  c.model = "cnn"  # default model for learners that take one
  # Keyword arguments of cljax.models.create for config.model (e.g. resnet18: width, stem); used
  # by base initialisation and handed to learners that accept `model_kwargs`.
  c.model_kwargs = ml_collections.ConfigDict()
  c.hparams = ml_collections.ConfigDict()  # run name -> hyper-parameters
  c.budget = ml_collections.ConfigDict(dict(passes_per_step=-1, batch_size=32))
  c.eval = ml_collections.ConfigDict(dict(every_examples=0, batch_size=250))
  c.num_devices = 0
  c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=3))
  c.plots = True
  # Base initialisation of config.model, active when classes > 0, kind == "mae" or checkpoint
  # is set. Learners then get its parameters (init_params), its frozen features (backbone) or
  # the whole of it (base: model, parameters, base set; REMIND). Saved to WORKDIR/base_init.
  #   kind: "supervised" (classification on the base set) or "mae" (masked autoencoding of
  #     unlabeled images, cljax.train.mae; ViT models).
  #   classes: the stream's step 0 holds the first `classes` classes, the base set.
  #   checkpoint: "" trains (or loads WORKDIR/base_init); else a base_init folder written by
  #     experiments/pretrain.py, loaded instead of training.
  #   dataset: "" uses step 0 (mae without classes: all training images of the stream); else a
  #     data set name whose train split is the base set.
  #   optimizer/lr/momentum/weight_decay: see cljax.learners._common.optimizer; lr_milestones:
  #     fractions of training where the lr is multiplied by lr_factor (REMIND: (0.375, 0.75)).
  #   augment: "none", "crop" (random crop, zero padding crop_padding px) or "crop_flip" (also a
  #     horizontal flip; not for digits). mask_ratio: mae's fraction of masked patches.
  c.base_init = ml_collections.ConfigDict(dict(
      classes=0, kind="supervised", checkpoint="", dataset="", epochs=5.0, lr=1e-3,
      batch_size=64, optimizer="adam", momentum=0.9, weight_decay=0.0, lr_milestones=(),
      lr_factor=0.1, augment="none", crop_padding=4, mask_ratio=0.75))
  return c


class ConfigError(ValueError):
  pass


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Unknown keys, names or values -> ConfigError listing the valid ones."""
  base = base_config()

  def check(cfg, ref, prefix):
    for k in cfg.keys():
      if k not in ref:
        raise ConfigError(f"unknown config key {prefix}{k!r}; valid keys: "
                          f"{sorted(prefix + x for x in ref.keys())}")
      if isinstance(ref[k], ml_collections.ConfigDict) and k not in ("hparams", "dataset_kwargs",
                                                                      "model_kwargs"):
        check(cfg[k], ref[k], f"{prefix}{k}.")

  check(config, base, "")
  if config.stream.ordering not in data_lib.ORDERINGS:
    raise ConfigError(f"unknown stream.ordering {config.stream.ordering!r}; valid: "
                      f"{list(data_lib.ORDERINGS)}")
  if config.model not in models_lib.names():
    raise ConfigError(f"unknown model {config.model!r}; valid models: {models_lib.names()}")
  _validate_base_init(config.base_init)
  names = run_names(config)
  if not names:
    raise ConfigError("config.learners is empty; give a comma-separated list, e.g. 'finetune,er'")
  valid = learners_lib.names()
  for n in names:
    lname = learner_of(config, n)
    if lname not in valid:
      raise ConfigError(f"unknown learner {lname!r} (run {n!r}); valid learners: {valid}")


def _validate_base_init(b) -> None:
  for key, value, valid in (("kind", b.kind, BASE_KINDS),
                            ("optimizer", b.optimizer, _common.OPTIMIZERS),
                            ("augment", b.augment, pretrain.AUGMENTS)):
    if value not in valid:
      raise ConfigError(f"unknown base_init.{key} {value!r}; valid: {list(valid)}")
  if b.dataset and b.dataset not in data_lib.names() and not str(b.dataset).startswith("tfds:"):
    raise ConfigError(f"unknown base_init.dataset {b.dataset!r}; valid: {data_lib.names()}")
  try:
    pretrain.lr_schedule(1.0, 1000, tuple(b.lr_milestones), float(b.lr_factor))
  except (TypeError, ValueError) as e:
    raise ConfigError(f"base_init.lr_milestones: {e}") from None
  if int(b.classes) < 0 or float(b.epochs) < 0 or int(b.batch_size) < 1:
    raise ConfigError(f"base_init needs classes >= 0, epochs >= 0 and batch_size >= 1, got "
                      f"{b.classes}, {b.epochs}, {b.batch_size}")
  if not 0.0 < float(b.mask_ratio) < 1.0:
    raise ConfigError(f"base_init.mask_ratio must be in (0, 1), got {b.mask_ratio}")


def run_names(config) -> list:
  return [s.strip() for s in str(config.learners).split(",") if s.strip()]


def learner_of(config, run_name: str) -> str:
  hp = config.hparams.get(run_name, None)
  return hp.get("learner", run_name) if hp is not None else run_name


def build_learner(config, run_name: str, stream, base: Optional["BaseInit"] = None
                  ) -> learners_lib.Learner:
  """Learner of run ``run_name``; hparams from the config, the rest offered when accepted:
  ``model``, ``model_kwargs``, ``batch_size`` and the stream's sizes, and with a base
  initialisation its parameters (``init_params``), frozen features (``backbone``) and the whole
  ``BaseInit`` (``base``)."""
  lname = learner_of(config, run_name)
  hp = dict(config.hparams.get(run_name, {}) or {})
  hp.pop("learner", None)
  hp = {k: (v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v) for k, v in hp.items()}
  accepted = set(learners_lib.hparam_names(lname))
  defaults = {"model": config.model, "batch_size": config.budget.batch_size,
              "model_kwargs": config.model_kwargs.to_dict()}
  if base is not None:
    params = base.params
    defaults["init_params"] = params
    defaults["backbone"] = lambda x: base.features(params, x)
    defaults["base"] = base
  for k, v in defaults.items():
    if k in accepted:
      hp.setdefault(k, v)
  opts = run_options(config)
  for k, v in runner.stream_hparams(lname, stream, opts).items():
    hp.setdefault(k, v)
  return learners_lib.get(lname, **hp)


def run_options(config) -> runner.RunOptions:
  b = int(config.budget.passes_per_step)
  return runner.RunOptions(
      batch_size=int(config.stream.batch_size), budget=None if b < 0 else b,
      eval_every_examples=int(config.eval.every_examples),
      eval_batch_size=int(config.eval.batch_size),
      num_devices=int(config.num_devices) or None,
      max_to_keep=int(config.checkpoint.max_to_keep), seed=int(config.seed))


def make_stream(config):
  ds = data_lib.load(config.dataset, **config.dataset_kwargs.to_dict())
  s = config.stream
  return data_lib.make_stream(
      ds, s.ordering, classes_per_step=int(s.classes_per_step), num_steps=int(s.num_steps),
      label_rate=float(s.label_rate), seed=int(config.seed if s.seed < 0 else s.seed),
      max_examples_per_step=int(s.max_examples_per_step) or None,
      first_step_classes=int(config.base_init.classes), label_noise=float(s.label_noise))


class BaseInit(NamedTuple):
  """A base-initialised model and the data it was trained on (what ``base`` learners receive).

  model, model_kwargs: the ``cljax.models`` name and constructor arguments.
  pure: ``PureModel`` (graphdef, params = the whole model state incl. batch statistics, apply and
    features in eval mode).
  x: [N, ...] float32 base-set inputs; y: [N] int32 labels (-1 where unlabeled: mae).
  classes: the base classes (sorted), empty for mae.
  kind: "supervised" or "mae"; path: where the checkpoint lies; test_accuracy: on the test
    examples of the base classes (None for mae).
  """

  model: str
  model_kwargs: dict
  pure: _common.PureModel
  x: np.ndarray
  y: np.ndarray
  classes: list
  kind: str
  path: str
  test_accuracy: Optional[float]

  @property
  def params(self) -> dict:
    return self.pure.params

  def features(self, params, x) -> Any:
    return self.pure.features(params, x)

  def apply(self, params, x) -> Any:
    return self.pure.apply(params, x)


def base_init_active(config) -> bool:
  b = config.base_init
  return int(b.classes) > 0 or b.kind == "mae" or bool(b.checkpoint)


def _base_data(config, stream):
  """(x [N, ...] float32, y [N] int32, classes, test x, test y) of the base set."""
  b = config.base_init
  k = stream.dataset.num_classes
  if b.dataset:
    kw = config.dataset_kwargs.to_dict() if b.dataset == config.dataset else {}
    ds = data_lib.load(b.dataset, **kw)
    x, y = ds.train.batch(np.arange(len(ds.train))), np.asarray(ds.train.y, np.int32)
    if tuple(x.shape[1:]) != tuple(stream.dataset.train.example_shape):
      raise ConfigError(f"base_init.dataset {b.dataset!r} has inputs of shape {x.shape[1:]}, the "
                        f"stream's are {stream.dataset.train.example_shape}")
    if b.kind == "supervised" and ds.num_classes > k:
      raise ConfigError(f"base_init.dataset {b.dataset!r} has {ds.num_classes} classes, the "
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


def base_model(config, stream, workdir: str, log=runner.default_log) -> Optional[BaseInit]:
  """The base-initialised model (``BaseInit``), or None when base initialisation is off.

  Order: ``base_init.checkpoint`` if set (loaded, never written); else WORKDIR/base_init if it
  exists (a pretrain.py run or an earlier run in this workdir); else trained and saved there.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if not base_init_active(config):
    return None
  b = config.base_init
  x, y, classes, tx, ty = _base_data(config, stream)
  k = stream.dataset.num_classes
  mkw = config.model_kwargs.to_dict()
  key = jax.random.fold_in(jax.random.key(int(config.seed)), 7)
  path = os.path.abspath(b.checkpoint or os.path.join(workdir, "base_init"))
  if b.checkpoint or os.path.isdir(path):
    if not os.path.isdir(path):
      raise ConfigError(f"base_init.checkpoint: no folder at {path}; write one with "
                        "experiments/pretrain.py --workdir=W (it goes to W/base_init)")
    pm = _common.pure_model(config.model, stream.dataset.train.example_shape, k, key, mkw)
    try:
      pm = pm._replace(params=pretrain.load_params(path, pm.params))
    except (ValueError, KeyError) as e:
      raise ConfigError(f"base-init checkpoint {path} does not fit model {config.model!r} with "
                        f"model_kwargs {mkw} ({type(e).__name__}: {str(e)[:300]})") from None
    log(f"[base_init] loaded {path}")
  elif b.kind == "mae":
    from cljax.train import mae  # pylint: disable=import-outside-toplevel
    log(f"[base_init] mae: {config.model} on {len(x)} unlabeled images")
    pm = mae.train_mae(config.model, x, k, key=key, epochs=float(b.epochs),
                       batch_size=int(b.batch_size), lr=float(b.lr),
                       mask_ratio=float(b.mask_ratio), model_kwargs=mkw, log=log)
    pretrain.save_params(path, pm.params)
  else:
    if len(x) == 0:
      raise ConfigError("base_init: no labelled base examples (set base_init.classes > 0 or "
                        "base_init.dataset)")
    log(f"[base_init] supervised: {config.model} on {len(x)} examples of classes {classes}")
    pm = pretrain.train_classifier(
        config.model, x, y, k, key=key, epochs=float(b.epochs), lr=float(b.lr),
        batch_size=int(b.batch_size), optimizer=str(b.optimizer), momentum=float(b.momentum),
        weight_decay=float(b.weight_decay), lr_milestones=tuple(b.lr_milestones),
        lr_factor=float(b.lr_factor), augment=str(b.augment), crop_padding=int(b.crop_padding),
        model_kwargs=mkw, log=log)
    pretrain.save_params(path, pm.params)
  acc = None
  if b.kind == "supervised" and tx is not None and len(tx):
    acc = pretrain.accuracy(pm, tx, ty)
    log(f"[base_init] {config.model} trained on {len(x)} examples of classes {classes}: "
        f"test accuracy {acc:.4f} on those classes ({len(tx)} test examples)")
  return BaseInit(config.model, mkw, pm, x, y, classes, str(b.kind), path, acc)


def run_base_init(config, workdir: str, log: Callable[[str], None] = runner.default_log
                  ) -> BaseInit:
  """``experiments/pretrain.py``: validates ``config``, builds its stream and runs (or loads)
  its base initialisation into WORKDIR/base_init, where ``run_experiment`` looks for it.

  Returns the ``BaseInit``. Raises ``ConfigError`` when the config has no
  base initialisation or is invalid, ``DataError`` for bad data.
  """
  validate_config(config)
  if not base_init_active(config):
    raise ConfigError(
        "the config has no base initialisation: set base_init.classes > 0, "
        "base_init.kind='mae' or base_init.checkpoint")
  if config.base_init.checkpoint:
    raise ConfigError(
        f"base_init.checkpoint is set ({config.base_init.checkpoint}): nothing to pretrain; "
        "clear it (--config.base_init.checkpoint='') to train one")
  os.makedirs(workdir, exist_ok=True)
  stream = make_stream(config)
  log(f"stream: {stream.describe()}")
  t0 = time.perf_counter()
  base = base_model(config, stream, workdir, log)
  log(f"[pretrain] {base.kind} base init of {config.model} ({len(base.x)} examples) in "
      f"{time.perf_counter() - t0:.1f}s; checkpoint: {base.path}")
  return base


def run_experiment(config: ml_collections.ConfigDict, workdir: str, resume: bool = False,
                   log: Callable[[str], None] = runner.default_log) -> dict:
  """Runs every learner of ``config`` on one stream; writes results.json, plots, prints a table."""
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  stream = make_stream(config)
  log(f"stream: {stream.describe()}")
  opts = run_options(config)
  results = {"config": config.to_dict(), "stream": stream.describe(), "runs": {}}
  path = os.path.join(workdir, "results.json")
  t0 = time.perf_counter()
  base = base_model(config, stream, workdir, log)
  if base is not None:
    results["base_init"] = {"classes": base.classes, "model": config.model, "kind": base.kind,
                            "examples": len(base.x), "test_accuracy": base.test_accuracy}
  for name in run_names(config):
    learner = build_learner(config, name, stream, base)
    results["runs"][name] = runner.run_learner(name, learner, stream, opts, workdir,
                                               resume=resume, log=log)
    runner.add_omega(results["runs"])
    report.write_json(path, results)
  results["wall_s"] = time.perf_counter() - t0
  report.write_json(path, results)
  if config.plots:
    report.plots(results["runs"], os.path.join(workdir, "plots"), stream.dataset.class_names)
  log("\n" + report.table(results["runs"]))
  log(f"results: {path}")
  return results
