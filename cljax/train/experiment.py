"""An experiment: several learners compared on one stream, written to WORKDIR/results.json + plots.

The configuration is an ``ml_collections.ConfigDict`` (see ``base_config``); configs in
``experiments/configs/`` start from ``base_config()`` and change what they need.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import ml_collections

from cljax import data as data_lib
from cljax import learners as learners_lib
from cljax.eval import report
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
  c.hparams = ml_collections.ConfigDict()  # run name -> hyper-parameters
  c.budget = ml_collections.ConfigDict(dict(passes_per_step=-1, batch_size=32))
  c.eval = ml_collections.ConfigDict(dict(every_examples=0, batch_size=250))
  c.num_devices = 0
  c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=3))
  c.plots = True
  # Base initialisation: train config.model on the first `classes` classes (step 0 of the
  # stream), then give learners its parameters (init_params) or its frozen features (backbone).
  c.base_init = ml_collections.ConfigDict(dict(classes=0, epochs=5.0, lr=1e-3, batch_size=64))
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
      if isinstance(ref[k], ml_collections.ConfigDict) and k not in ("hparams", "dataset_kwargs"):
        check(cfg[k], ref[k], f"{prefix}{k}.")

  check(config, base, "")
  if config.stream.ordering not in data_lib.ORDERINGS:
    raise ConfigError(f"unknown stream.ordering {config.stream.ordering!r}; valid: "
                      f"{list(data_lib.ORDERINGS)}")
  names = run_names(config)
  if not names:
    raise ConfigError("config.learners is empty; give a comma-separated list, e.g. 'finetune,er'")
  valid = learners_lib.names()
  for n in names:
    lname = learner_of(config, n)
    if lname not in valid:
      raise ConfigError(f"unknown learner {lname!r} (run {n!r}); valid learners: {valid}")


def run_names(config) -> list:
  return [s.strip() for s in str(config.learners).split(",") if s.strip()]


def learner_of(config, run_name: str) -> str:
  hp = config.hparams.get(run_name, None)
  return hp.get("learner", run_name) if hp is not None else run_name


def build_learner(config, run_name: str, stream, base=None) -> learners_lib.Learner:
  lname = learner_of(config, run_name)
  hp = dict(config.hparams.get(run_name, {}) or {})
  hp.pop("learner", None)
  hp = {k: (v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v) for k, v in hp.items()}
  accepted = set(learners_lib.hparam_names(lname))
  defaults = {"model": config.model, "batch_size": config.budget.batch_size}
  if base is not None:
    params = base.params
    defaults["init_params"] = params
    defaults["backbone"] = lambda x: base.features(params, x)
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


def base_model(config, stream, workdir: str, log=runner.default_log):
  """The base-initialised model (trained on step 0), or None when base_init.classes is 0.

  Saved under WORKDIR/base_init; a later run (or --resume) in the same workdir loads it.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from cljax.learners import _common  # pylint: disable=import-outside-toplevel
  from cljax.train import pretrain  # pylint: disable=import-outside-toplevel
  b = config.base_init
  if int(b.classes) <= 0:
    return None
  src = stream.dataset.train
  idx = stream.steps[0][stream.labeled[0]]
  x, y = src.batch(idx), stream.labels[0][stream.labeled[0]]
  key = jax.random.fold_in(jax.random.key(int(config.seed)), 7)
  path = os.path.join(workdir, "base_init")
  if os.path.isdir(path):
    pm = _common.pure_model(config.model, x.shape[1:], stream.dataset.num_classes, key)
    pm = pm._replace(params=pretrain.load_params(path, pm.params))
    log(f"[base_init] loaded {path}")
  else:
    pm = pretrain.train_classifier(config.model, x, y, stream.dataset.num_classes, key=key,
                                   epochs=float(b.epochs), lr=float(b.lr),
                                   batch_size=int(b.batch_size), log=log)
    pretrain.save_params(path, pm.params)
  test = np.concatenate([stream.test_index[0]])
  acc = pretrain.accuracy(pm, stream.dataset.test.batch(test), stream.dataset.test.y[test])
  log(f"[base_init] {config.model} on {len(idx)} examples of classes "
      f"{stream.tasks[0].tolist()}: test accuracy {acc:.4f} on those classes")
  return pm


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
    results["base_init"] = {"classes": stream.tasks[0].tolist(), "model": config.model}
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
