"""An experiment: several learners compared on one stream, written to WORKDIR/results.json + plots.

The configuration is an ``ml_collections.ConfigDict`` (see ``base_config``); configs in
``experiments/configs/`` start from ``base_config()`` and change what they need.

A workdir holds one experiment: ``experiment.json`` records its fingerprint (the config keys that
decide what a run computes, and a digest of the data) and every run in it with its learner and
hyper-parameters; ``results.json`` gathers every run's result, from this call and earlier ones.
Before anything trains, ``run_experiment`` refuses (``ConfigError``, naming the keys) a config
whose fingerprint differs from the one recorded, and a run already in the workdir unless
``resume`` is set; runs not yet in the workdir are added.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Optional

import ml_collections
from ml_collections import config_dict

from cljax.ops import augment
from cljax.train import pretrain
from cljax import data as data_lib
from cljax import learners as learners_lib
from cljax import models as models_lib
from cljax import optim
from cljax.eval import loggers as loggers_lib
from cljax.eval import report
from cljax.eval import results as results_lib
from cljax.app import base_init as base_lib
from cljax.app import distributed
from cljax.train import mesh as mesh_lib
from cljax.app import runner


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
  # passes_per_step: forward-backward passes of batch_size rows per time step, >= 1; None (unset;
  # --config.budget.passes_per_step=None) gives each learner its own default.
  c.budget = ml_collections.ConfigDict(dict(passes_per_step=config_dict.placeholder(int),
                                            batch_size=32))
  # every_examples: anytime evaluation every this many examples (0: step ends only).
  # omega_topk: Ω from top-1 (1) or top-5 (5) accuracy; omega_points: "step_ends" (the points
  # where the offline reference is up to date) or "all" (anytime points too).
  c.eval = ml_collections.ConfigDict(dict(every_examples=0, batch_size=250, omega_topk=1,
                                          omega_points="step_ends"))
  c.num_devices = 0
  # JAX processes the run spans (jax.distributed). experiments/run.py starts them all on this
  # machine, or, with --coordinator_address and --process_id, joins them one per host.
  c.num_processes = 1
  c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=3))
  c.plots = True
  # Loggers writing while the runs go (cljax.eval.loggers), comma-separated: "tensorboard"
  # (WORKDIR/tensorboard/<run>/events.out.tfevents.*), "csv" (WORKDIR/metrics.csv); "" none.
  c.log = ""
  # Base initialisation of config.model, active when classes > 0, kind == "mae" or checkpoint
  # is set. Learners then get its parameters (init_params), its frozen features (backbone) or
  # the whole of it (base: model, parameters, base set; REMIND). Saved to WORKDIR/base_init.
  #   kind: "supervised" (classification on the base set) or "mae" (masked autoencoding of
  #     unlabeled images, cljax.train.pretrain.train_mae; ViT models).
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
  """Unknown keys, names or values -> ConfigError listing the valid ones (nothing is loaded or
  trained before this passes)."""
  base = base_config()

  def check(cfg, ref, prefix):
    for k in cfg.keys():
      if k not in ref:
        raise ConfigError(f"unknown config key {prefix + k!r}; valid keys: "
                          f"{sorted(prefix + x for x in ref.keys())}")
      if isinstance(ref[k], ml_collections.ConfigDict) and k not in ("hparams", "dataset_kwargs",
                                                                      "model_kwargs"):
        if not isinstance(cfg[k], ml_collections.ConfigDict):
          raise ConfigError(f"config key {prefix}{k} must be a group of keys "
                            f"{sorted(ref[k].keys())}, got {cfg[k]!r}")
        check(cfg[k], ref[k], f"{prefix}{k}.")

  check(config, base, "")
  _number("seed", config.seed, 0)
  s = config.stream
  for key, lo in (("batch_size", 1), ("classes_per_step", 1), ("num_steps", 1), ("seed", -1),
                  ("max_examples_per_step", 0)):
    _number(f"stream.{key}", s[key], lo)
  _number("stream.label_rate", s.label_rate, 0.0, 1.0, float, "in (0, 1]", open_low=True)
  _number("stream.label_noise", s.label_noise, 0.0, 1.0, float, "in [0, 1)", open_high=True)
  if config.budget.passes_per_step is not None:
    _number("budget.passes_per_step", config.budget.passes_per_step, 1,
            hint="; leave it unset (--config.budget.passes_per_step=None) for each learner's "
                 "default")
  _number("budget.batch_size", config.budget.batch_size, 1)
  _number("eval.every_examples", config.eval.every_examples, 0)
  _number("eval.batch_size", config.eval.batch_size, 1)
  if config.eval.omega_topk not in results_lib.OMEGA_TOPK:
    raise ConfigError(f"eval.omega_topk must be one of {results_lib.OMEGA_TOPK}, got "
                      f"{config.eval.omega_topk!r}")
  if config.eval.omega_points not in results_lib.OMEGA_POINTS:
    raise ConfigError(f"eval.omega_points must be one of {list(results_lib.OMEGA_POINTS)}, got "
                      f"{config.eval.omega_points!r}")
  _number("num_devices", config.num_devices, 0, hint=" (0: all devices)")
  _number("num_processes", config.num_processes, 1)
  _number("checkpoint.max_to_keep", config.checkpoint.max_to_keep, 1)
  if config.stream.ordering not in data_lib.ORDERINGS:
    raise ConfigError(f"unknown stream.ordering {config.stream.ordering!r}; valid: "
                      f"{list(data_lib.ORDERINGS)}")
  if config.model not in models_lib.names():
    raise ConfigError(f"unknown model {config.model!r}; valid models: {models_lib.names()}")
  _validate_base_init(config.base_init)
  try:
    loggers_lib.parse_kinds(config.log)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  names = run_names(config)
  if not names:
    raise ConfigError("config.learners is empty; give a comma-separated list, e.g. 'finetune,er'")
  valid = learners_lib.names()
  for n in names:
    hp = config.hparams.get(n, None)
    if hp is not None and not isinstance(hp, (dict, ml_collections.ConfigDict)):
      raise ConfigError(f"hparams.{n} must be a group of hyper-parameters, got {hp!r}")
    lname = learner_of(config, n)
    if lname not in valid:
      raise ConfigError(f"unknown learner {lname!r} (run {n!r}); valid learners: {valid}")
    try:
      learners_lib.registry.check_hparams(lname, _hparams_of(config, n))
    except ValueError as e:
      raise ConfigError(f"hparams.{n}: {e}") from None


def _number(key: str, value, lo, hi=None, kind=int, what: str = "", *, open_low: bool = False,
            open_high: bool = False, hint: str = "") -> None:
  """ConfigError unless ``value`` is a ``kind`` (an int for int keys; bools refused) within
  [lo, hi] (bounds excluded where ``open_low``/``open_high``)."""
  ok = (isinstance(value, (int, float) if kind is float else int)
        and not isinstance(value, bool))
  if ok:
    ok = (value > lo if open_low else value >= lo) and (
        hi is None or (value < hi if open_high else value <= hi))
  if not ok:
    need = what or (f">= {lo}" if hi is None else f"in [{lo}, {hi}]")
    raise ConfigError(f"{key} must be {'a number' if kind is float else 'an integer'} {need}, "
                      f"got {value!r}{hint}")


def _validate_base_init(b) -> None:
  for key, value, valid in (("kind", b.kind, pretrain.KINDS),
                            ("optimizer", b.optimizer, optim.OPTIMIZERS),
                            ("augment", b.augment, augment.AUGMENTS)):
    if value not in valid:
      raise ConfigError(f"unknown base_init.{key} {value!r}; valid: {list(valid)}")
  if b.dataset and b.dataset not in data_lib.names() and not str(b.dataset).startswith("tfds:"):
    raise ConfigError(f"unknown base_init.dataset {b.dataset!r}; valid: {data_lib.names()}")
  try:
    optim.step_schedule(1.0, 1000, tuple(b.lr_milestones), float(b.lr_factor))
  except (TypeError, ValueError) as e:
    raise ConfigError(f"base_init.lr_milestones: {e}") from None
  _number("base_init.classes", b.classes, 0)
  _number("base_init.epochs", b.epochs, 0.0, kind=float)
  _number("base_init.batch_size", b.batch_size, 1)
  _number("base_init.mask_ratio", b.mask_ratio, 0.0, 1.0, float, "in (0, 1)", open_low=True,
          open_high=True)


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
                  base: Optional[pretrain.BaseInit] = None) -> learners_lib.registry.Learner:
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
  return runner.RunOptions(
      batch_size=int(config.stream.batch_size), budget=config.budget.passes_per_step,
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


# Config keys that do not change what a run computes: left out of the fingerprint, so they may
# change between a run and its resume (another machine, other reports).
_NOT_FINGERPRINTED = ("learners", "hparams", "num_devices", "num_processes", "checkpoint",
                      "plots", "log",
                      "eval.batch_size", "eval.omega_topk", "eval.omega_points")


def fingerprint(config, stream) -> dict:
  """The experiment's fingerprint: every config key that decides what its runs compute (flat,
  e.g. ``stream.seed``), and ``data_sha256``, a digest of the data set's arrays."""
  flat = runner.flatten(config.to_dict())
  out = {k: v for k, v in flat.items()
         if not any(k == x or k.startswith(x + ".") for x in _NOT_FINGERPRINTED)}
  out["data_sha256"] = stream.dataset.sha256()
  return json.loads(json.dumps(out))  # the JSON form, as read back from experiment.json


def run_entry(config, run_name: str) -> dict:
  """A run's part of the fingerprint: its learner and hyper-parameters (flat)."""
  hp = runner.flatten({"hparams": _hparams_of(config, run_name)})
  return json.loads(json.dumps({"learner": learner_of(config, run_name), **hp}))


def _read_json(path: str, what: str):
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path} is unreadable ({type(e).__name__}: {str(e)[:120]}); it holds "
                      f"{what}: restore it, or use a new --workdir") from None


def prepare_workdir(workdir: str) -> str:
  """Creates ``workdir`` if needed and checks that files can be written there; returns its
  absolute path. ConfigError (one line) otherwise."""
  path = os.path.abspath(workdir)
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"cannot write to --workdir {path} ({e.strerror or e}); choose a writable "
                      "folder") from None
  return path


def _has_steps(workdir: str, run_name: str) -> list:
  d = os.path.join(workdir, "checkpoints", run_name)
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def check_workdir(workdir: str, config, stream, resume: bool,
                  names: Optional[list] = None) -> tuple:
  """Checks ``config`` against what ``workdir`` already holds, before anything trains.

  ``names``: the runs about to be made (default: the config's). Returns (the experiment record
  to write, with those runs added; the runs already in results.json). Raises ConfigError naming
  the keys when the experiment fingerprint or a run's hyper-parameters differ from the recorded
  ones, and when one of ``names`` is already in the workdir and ``resume`` is not set.
  """
  fp = fingerprint(config, stream)
  record_path = os.path.join(workdir, "experiment.json")
  record = _read_json(record_path, "the fingerprint of the runs in this workdir")
  previous = (_read_json(os.path.join(workdir, "results.json"), "the results of earlier runs")
              or {}).get("runs", {})
  names = run_names(config) if names is None else names
  if record is None:
    old = [n for n in names if _has_steps(workdir, n)] + list(previous)
    if old:
      raise ConfigError(f"{workdir} holds runs {sorted(set(old))} but no experiment.json (written "
                        "by an older cljax, or removed), so their config cannot be checked; use "
                        "a new --workdir")
    record = {"version": 1, "fingerprint": fp, "runs": {}}
  differ = runner.fingerprint_diff(record["fingerprint"], fp)
  for n in names:
    if n in record["runs"]:
      differ += [f"{n}: {d}" for d in runner.fingerprint_diff(record["runs"][n],
                                                              run_entry(config, n))]
  if differ:
    raise ConfigError(f"{workdir} holds runs made with another config: {', '.join(differ)}; "
                      "use the recorded values, another run name (hparams.NAME.learner), or a "
                      "new --workdir")
  for n in names:
    steps = _has_steps(workdir, n)
    if not resume and (steps or n in previous):
      state = ("finished, its results are in results.json" if n in previous else
               f"checkpoints up to step {steps[-1]}")
      raise ConfigError(f"run {n!r} is already in {workdir} ({state}); pass --resume to "
                        "continue or reuse it, or leave it out of --config.learners (runs not "
                        "yet in the workdir are added to results.json)")
    record["runs"][n] = run_entry(config, n)
  return record, previous


def base_model(config, stream, workdir: str, log=runner.default_log
               ) -> Optional[pretrain.BaseInit]:
  """``cljax.app.base_init.from_config`` with bad settings reported as ``ConfigError``."""
  try:
    return base_lib.from_config(config, stream, workdir, data_lib.load, log,
                                save=distributed.primary())
  except ValueError as e:
    if isinstance(e, data_lib.DataError):
      raise
    raise ConfigError(str(e)) from None


def run_base_init(config, workdir: str, log: Callable[[str], None] = runner.default_log
                  ) -> pretrain.BaseInit:
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
  workdir = prepare_workdir(workdir)
  stream = make_stream(config)
  log(f"stream: {stream.describe()}")
  # The base network belongs to the experiment: recorded, so that run.py in this workdir
  # refuses a config that would have trained another one.
  record, _ = check_workdir(workdir, config, stream, resume=True, names=[])
  report.write_json(os.path.join(workdir, "experiment.json"), record)
  t0 = time.perf_counter()
  base = base_model(config, stream, workdir, log)
  log(f"[pretrain] {base.kind} base init of {config.model} ({len(base.x)} examples) in "
      f"{time.perf_counter() - t0:.1f}s; checkpoint: {base.path}")
  return base


def prepare(config, workdir: str, resume: bool, log: Callable[[str], None]) -> tuple:
  """Every check before any training: the config, the workdir, the data and stream, the
  devices, the workdir's record. Returns (absolute workdir, stream, experiment record, runs
  already in results.json)."""
  validate_config(config)
  workdir = prepare_workdir(workdir)
  stream = make_stream(config)
  if stream.dataset.inferred_num_classes:
    log(f"data: num_classes not given: {stream.dataset.num_classes} classes inferred from the "
        f"labels of {stream.dataset.name} (set dataset_kwargs.num_classes to fix it)")
  log(f"stream: {stream.describe()}")
  if int(config.num_processes) > 1 and distributed.count() == 1:  # the launcher's check
    if int(config.num_devices):
      raise ConfigError(f"num_devices: a run over {config.num_processes} processes uses all "
                        f"their devices; leave num_devices at 0 (got {config.num_devices})")
  else:
    try:
      mesh_lib.data_mesh(int(config.num_devices) or None)
    except ValueError as e:
      raise ConfigError(f"num_devices: {e}") from None
  record, previous = check_workdir(workdir, config, stream, resume)
  return workdir, stream, record, previous


def run_experiment(config: ml_collections.ConfigDict, workdir: str, resume: bool = False,
                   log: Callable[[str], None] = runner.default_log) -> dict:
  """Runs every learner of ``config`` on one stream; writes results.json, plots, prints a table.

  Everything is checked before anything trains (``prepare``): the whole config, every learner's
  hyper-parameter names, the data, the workdir and what it already holds. Every learner is built
  (its hyper-parameter values checked) before any of them trains, after the base
  initialisation they may need. results.json keeps the runs of earlier calls in ``workdir``.
  ``config.log`` names the loggers (``cljax.eval.loggers``) that get each step's metrics and
  evaluation points while the runs go.
  """
  workdir, stream, record, previous = prepare(config, workdir, resume, log)
  # Several processes: every one checks the workdir before the primary, alone, writes to it.
  distributed.sync("workdir checked")
  writes = distributed.primary()
  if writes:
    report.write_json(os.path.join(workdir, "experiment.json"), record)
  opts = run_options(config)
  results = {"config": config.to_dict(), "stream": stream.describe(), "runs": dict(previous)}
  path = os.path.join(workdir, "results.json")
  t0 = time.perf_counter()
  base = base_model(config, stream, workdir, log)
  if base is not None:
    results["base_init"] = {"classes": base.classes, "model": config.model, "kind": base.kind,
                            "examples": len(base.x), "test_accuracy": base.test_accuracy}
  built = {name: build_learner(config, name, stream, base) for name in run_names(config)}
  fp = record["fingerprint"]
  logger = loggers_lib.make(config.log if writes else "", workdir)
  try:
    for name, learner in built.items():
      opts.fingerprint = {**fp, **record["runs"][name]}
      results["runs"][name] = runner.run_learner(name, learner, stream, opts, workdir,
                                                 resume=resume, log=log, logger=logger)
      if writes:
        _write_results(path, results, config)
  finally:
    logger.close()  # what was logged stays on disk on an error or a signal too
  results["wall_s"] = time.perf_counter() - t0
  if not writes:
    results_lib.add_omega(results["runs"], topk=int(config.eval.omega_topk),
                          points=str(config.eval.omega_points))
    return results
  _write_results(path, results, config)
  if config.plots:
    report.plots(results["runs"], os.path.join(workdir, "plots"), stream.dataset.class_names)
  log("\n" + report.table(results["runs"]))
  log(f"results: {path}")
  return results


def _write_results(path: str, results: dict, config) -> None:
  results_lib.add_omega(results["runs"], topk=int(config.eval.omega_topk),
                        points=str(config.eval.omega_points))
  report.write_json(path, results)
