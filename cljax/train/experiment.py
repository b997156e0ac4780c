"""An experiment: several learners compared on one stream, written to WORKDIR/results.json + plots.

The configuration is an ``ml_collections.ConfigDict`` (see ``base_config``); configs in
``experiments/configs/`` start from ``base_config()`` and change what they need.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

import ml_collections

from cljax import data as data_lib
from cljax import learners as learners_lib
from cljax import models as models_lib
from cljax import optim
from cljax.eval import report
from cljax.eval import results as results_lib
from cljax.train import base_init as base_lib
from cljax.train import runner


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
  #     unlabeled images, cljax.train.base_init.train_mae; ViT models).
  #   classes: the stream's step 0 holds the first `classes` classes, the base set.
  #   checkpoint: "" trains (or loads WORKDIR/base_init); else a base_init folder written by
  #     experiments/pretrain.py, loaded instead of training.
  #   dataset: "" uses step 0 (mae without classes: all training images of the stream); else a
  #     data set name whose train split is the base set.
  #   optimizer/lr/momentum/weight_decay: see cljax.optim.build; lr_milestones:
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
    try:
      learners_lib.registry.check_hparams(lname, _hparams_of(config, n))
    except ValueError as e:
      raise ConfigError(f"hparams.{n}: {e}") from None


def _validate_base_init(b) -> None:
  for key, value, valid in (("kind", b.kind, base_lib.KINDS),
                            ("optimizer", b.optimizer, optim.OPTIMIZERS),
                            ("augment", b.augment, base_lib.AUGMENTS)):
    if value not in valid:
      raise ConfigError(f"unknown base_init.{key} {value!r}; valid: {list(valid)}")
  if b.dataset and b.dataset not in data_lib.names() and not str(b.dataset).startswith("tfds:"):
    raise ConfigError(f"unknown base_init.dataset {b.dataset!r}; valid: {data_lib.names()}")
  try:
    optim.step_schedule(1.0, 1000, tuple(b.lr_milestones), float(b.lr_factor))
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


def _hparams_of(config, run_name: str) -> dict:
  hp = dict(config.hparams.get(run_name, {}) or {})
  hp.pop("learner", None)
  return {k: (v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v)
          for k, v in hp.items()}


def build_learner(config, run_name: str, stream,
                  base: Optional[base_lib.BaseInit] = None) -> learners_lib.registry.Learner:
  """The bare learner (``checked=False``: the runner checks batches) of run ``run_name``.

  Hyper-parameters come from ``config.hparams.<run_name>``; the inputs the learner declares in
  the registry (``cljax.learners.INPUTS``) are filled, unless the config sets them, from the
  config (``model``, ``model_kwargs``, ``budget.batch_size``), the stream (``max_step_size``,
  ``stream_size``) and the base initialisation (``init_params``, ``backbone``, ``base``).
  """
  lname = learner_of(config, run_name)
  hp = _hparams_of(config, run_name)
  offered = {"model": config.model, "model_kwargs": config.model_kwargs.to_dict(),
             "batch_size": int(config.budget.batch_size), **runner.stream_inputs(stream),
             **base_lib.inputs_for(base)}
  for name in learners_lib.inputs(lname):
    if name in offered:
      hp.setdefault(name, offered[name])
  try:
    return learners_lib.get(lname, num_classes=stream.dataset.num_classes, checked=False, **hp)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"learner {lname!r} (run {run_name!r}): {e}") from None


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


def base_model(config, stream, workdir: str, log=runner.default_log
               ) -> Optional[base_lib.BaseInit]:
  """``cljax.train.base_init.from_config`` with bad settings reported as ``ConfigError``."""
  try:
    return base_lib.from_config(config, stream, workdir, data_lib.load, log)
  except ValueError as e:
    if isinstance(e, data_lib.DataError):
      raise
    raise ConfigError(str(e)) from None


def run_base_init(config, workdir: str, log: Callable[[str], None] = runner.default_log
                  ) -> base_lib.BaseInit:
  """``experiments/pretrain.py``: validates ``config``, builds its stream and runs (or loads)
  its base initialisation into WORKDIR/base_init, where ``run_experiment`` looks for it.

  Returns the ``BaseInit``. Raises ``ConfigError`` when the config has no
  base initialisation or is invalid, ``DataError`` for bad data.
  """
  validate_config(config)
  if not base_lib.active(config):
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
  """Runs every learner of ``config`` on one stream; writes results.json, plots, prints a table.

  Every learner is built (and its hyper-parameters checked) before any of them trains.
  """
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
  built = {name: build_learner(config, name, stream, base) for name in run_names(config)}
  for name, learner in built.items():
    results["runs"][name] = runner.run_learner(name, learner, stream, opts, workdir,
                                               resume=resume, log=log)
    results_lib.add_omega(results["runs"])
    report.write_json(path, results)
  results["wall_s"] = time.perf_counter() - t0
  report.write_json(path, results)
  if config.plots:
    report.plots(results["runs"], os.path.join(workdir, "plots"), stream.dataset.class_names)
  log("\n" + report.table(results["runs"]))
  log(f"results: {path}")
  return results
