"""An experiment: several learners compared on one stream, written to WORKDIR/results.json + plots.

The configuration is an ``ml_collections.ConfigDict`` (schema: ``cljax.app.config_schema``);
configs in ``experiments/configs/`` start from ``base_config()`` and change what they need. The
binary turns it once into typed settings (``cljax.app.settings.from_config``) and calls ``run``;
``run_experiment(config, ...)`` does both, for library callers.

The walk, downwards: settings -> the workdir and the data (``prepare``: the stream, the mesh,
the workdir record, ``cljax.app.workdir``) -> the base initialisation (``cljax.app.base_init``)
-> each run's learner (``build_learner``, its inputs from ``learner_inputs``) -> the runner
(``cljax.app.runner``) -> results.json, plots, the table (``cljax.eval``).

One run writes to a workdir at a time (``cljax.app.workdir.lock``). After the runs, results.json,
the table, and the plots: ``report.plots`` and ``report.diagnostic_plots`` (loss curves, ROC,
calibration, decision boundary, from each run's ``predictions/<run>.npz``).

A workdir holds one experiment (``cljax.app.workdir``): before anything trains, ``prepare``
refuses (``ConfigError``, naming the keys) a config whose fingerprint differs from the one
recorded, and a run already in the workdir unless ``resume`` is set; runs not yet in the workdir
are added.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import time
from typing import Callable, NamedTuple, Optional

import ml_collections

from cljax import data as data_lib
from cljax import learners as learners_lib
from cljax.app import base_init as base_lib
from cljax.app import distributed
from cljax.app import runner
from cljax.app import settings as settings_lib
from cljax.app import workdir as workdir_lib
from cljax.app.config_schema import ConfigError, base_config  # noqa: F401  (the public names)
from cljax.app.settings import (LearnerSpec, Settings, learner_of, run_names,  # noqa: F401
                                validate as validate_config)
from cljax.eval import loggers as loggers_lib
from cljax.eval import report
from cljax.eval import results as results_lib
from cljax.train import mesh as mesh_lib
from cljax.train import pretrain


def make_stream(s: settings_lib.StreamSettings):
  """The stream of settings ``s`` (its data set loaded)."""
  ds = data_lib.load(s.dataset, **dict(s.dataset_kwargs))
  return data_lib.make_stream(
      ds, s.ordering, classes_per_step=s.classes_per_step, num_steps=s.num_steps,
      label_rate=s.label_rate, seed=s.seed, max_examples_per_step=s.max_examples_per_step,
      first_step_classes=s.first_step_classes, label_noise=s.label_noise,
      val_fraction=s.val_fraction, val_folds=s.val_folds, val_fold=s.val_fold)


def learner_inputs(settings: Settings, stream, base: Optional[pretrain.BaseInit] = None) -> dict:
  """Everything an experiment offers learners (``cljax.learners.INPUTS``), in one place: from the
  settings (``model``, ``model_kwargs``, ``batch_size``: ``budget.batch_size``), the stream
  (``max_step_size``, ``stream_size``) and the base initialisation (``init_params``,
  ``backbone``, ``base``; none without one)."""
  out = {"model": settings.model, "model_kwargs": dict(settings.model_kwargs),
         "batch_size": settings.batch_size, "max_step_size": stream.max_step_size,
         "stream_size": stream.num_examples}
  if base is not None:
    out.update(init_params=base.params, backbone=base.backbone(), base=base)
  return out


BASE_INPUTS = ("init_params", "backbone", "base")  # the inputs that carry the base network


def base_used(spec: LearnerSpec, base: Optional[pretrain.BaseInit], dataset: str) -> str:
  """Which base initialisation run ``spec`` starts from: "none" (no base, or the learner takes
  none of ``BASE_INPUTS``), "hparams" (its hyper-parameters set them all), else "<kind>:<data
  set> (<N> images)", ``dataset`` being ``base_init.dataset`` ("" = the stream's own)."""
  wanted = [n for n in learners_lib.inputs(spec.learner) if n in BASE_INPUTS]
  if base is None or not wanted:
    return "none"
  if all(n in spec.hparams for n in wanted):
    return "hparams"
  return f"{base.kind}:{dataset or 'stream'} ({len(base.x)} images)"


def build_learner(spec: LearnerSpec, num_classes: int, inputs: dict
                  ) -> learners_lib.registry.Learner:
  """The bare learner (``checked=False``: the runner checks batches) of run ``spec``.

  Hyper-parameters come from ``spec.hparams``; the inputs the learner declares in the registry
  (``cljax.learners.INPUTS``) are filled from ``inputs`` (``learner_inputs``) unless the spec
  sets them.
  """
  hp = dict(spec.hparams)
  for name in learners_lib.inputs(spec.learner):
    if name in inputs:
      hp.setdefault(name, inputs[name])
  try:
    return learners_lib.get(spec.learner, num_classes=num_classes, checked=False, **hp)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"learner {spec.learner!r} (run {spec.name!r}): {e}") from None


# Hyper-parameters that are learning rates (``lr``, ``slow_lr``, ``min_lr``, REMIND's ``lr0``),
# not factors or schedules of one (``buffer_lr_scale``, ``lr_gamma``, ``lr_step``).
_LEARNING_RATE = re.compile(r"(\w+_)?lr\d*")


def rescaled_learner(spec: LearnerSpec, num_classes: int, inputs: dict,
                     learner: learners_lib.registry.Learner, scale: float
                     ) -> Optional[learners_lib.registry.Learner]:
  """Run ``spec``'s learner rebuilt with every learning rate of its effective hyper-parameters
  (``learner.hparams``: the spec's values and the factory's defaults) times ``scale``: what
  ``on_divergence="rollback"`` continues with. None when the learner has no learning rate
  (nothing to halve). Its state has the same structure: the runner goes on with the old one."""
  rates = {k: v * scale for k, v in learner.hparams.items()
           if _LEARNING_RATE.fullmatch(k) and isinstance(v, (int, float))
           and not isinstance(v, bool)}
  if not rates:
    return None
  return build_learner(dataclasses.replace(spec, hparams={**dict(spec.hparams), **rates}),
                       num_classes, inputs)


def base_model(settings: Settings, stream, workdir: str,
               log: Callable[[str], None] = distributed.log) -> Optional[pretrain.BaseInit]:
  """``cljax.app.base_init.build`` of ``settings.base_init``, with bad settings reported as
  ``ConfigError``."""
  try:
    return base_lib.build(settings.base_init, stream, workdir, data_lib.load, log,
                          save=distributed.primary())
  except ValueError as e:
    if isinstance(e, data_lib.DataError):
      raise
    raise ConfigError(str(e)) from None


class Prepared(NamedTuple):
  """What ``prepare`` checked and built: the absolute ``workdir``, the ``stream``, the ``mesh``
  (None in a multi-process run's launcher, which trains nothing), the workdir ``record`` to
  write (``cljax.app.workdir.check``) and the runs ``previous``ly in results.json."""

  workdir: str
  stream: data_lib.Stream
  mesh: Optional[mesh_lib.Mesh]
  record: dict
  previous: dict


def prepare(settings: Settings, workdir: str, resume: bool, log: Callable[[str], None],
            specs: Optional[list] = None) -> Prepared:
  """Every check before any training: the workdir, the data and stream, the devices (the mesh,
  built here once), the workdir's record. ``specs``: the runs about to be made (default: every
  run of the settings)."""
  workdir = workdir_lib.prepare(workdir)
  if distributed.primary():  # the launcher, or process 0 (which holds the lock itself)
    workdir_lib.check_unlocked(workdir)  # another run writing there: refused before any work
  stream = make_stream(settings.stream)
  if stream.dataset.inferred_num_classes:
    log(f"data: num_classes not given: {stream.dataset.num_classes} classes inferred from the "
        f"labels of {stream.dataset.name} (set dataset_kwargs.num_classes to fix it)")
  log(f"stream: {stream.describe()}")
  mesh = None
  if settings.num_processes > 1 and distributed.count() == 1:  # the launcher's check
    if settings.num_devices:
      raise ConfigError(f"num_devices: a run over {settings.num_processes} processes uses all "
                        f"their devices; leave num_devices at 0 (got {settings.num_devices})")
  else:
    try:
      mesh = mesh_lib.data_mesh(settings.num_devices or None)
    except ValueError as e:
      raise ConfigError(f"num_devices: {e}") from None
  specs = list(settings.learners) if specs is None else specs
  fp = workdir_lib.fingerprint(settings.config, stream.dataset.sha256())
  record, previous = workdir_lib.check(workdir, fp, specs, resume)
  workdir_lib.check_omega_reference(settings.eval.omega_reference, settings.run_names, previous)
  return Prepared(workdir, stream, mesh, record, previous)


def pretrain_base(settings: Settings, workdir: str,
                  log: Callable[[str], None] = distributed.log) -> pretrain.BaseInit:
  """``experiments/pretrain.py``: builds the stream of ``settings`` and runs (or loads) its base
  initialisation into WORKDIR/base_init, where ``run`` looks for it.

  Returns the ``BaseInit``. Raises ``ConfigError`` when the settings have no base initialisation,
  ``DataError`` for bad data.
  """
  b = settings.base_init
  if not b.active:
    raise ConfigError(
        "the config has no base initialisation: set base_init.classes > 0, "
        "base_init.kind='mae' or base_init.checkpoint")
  if b.checkpoint:
    raise ConfigError(
        f"base_init.checkpoint is set ({b.checkpoint}): nothing to pretrain; "
        "clear it (--config.base_init.checkpoint='') to train one")
  with _writer_lock(workdir, log):
    return _pretrain_base(settings, workdir, log)


def _writer_lock(workdir: str, log: Callable[[str], None]):
  """``cljax.app.workdir.lock`` of ``workdir`` in the process that writes (the primary): one run
  per workdir, whatever its process count (the others are refused in ``prepare``)."""
  if not distributed.primary():
    return contextlib.nullcontext()
  return workdir_lib.lock(workdir_lib.prepare(workdir), log)


def _pretrain_base(settings: Settings, workdir: str, log: Callable[[str], None]
                   ) -> pretrain.BaseInit:
  b = settings.base_init
  # The base network belongs to the experiment: recorded, so that run.py in this workdir
  # refuses a config that would have trained another one.
  p = prepare(settings, workdir, resume=True, log=log, specs=[])
  report.write_json(os.path.join(p.workdir, "experiment.json"), p.record)
  t0 = time.perf_counter()
  base = base_model(settings, p.stream, p.workdir, log)
  log(f"[pretrain] {base.kind} base init of {b.model} ({len(base.x)} examples) in "
      f"{time.perf_counter() - t0:.1f}s; checkpoint: {base.path}")
  return base


def run_base_init(config: ml_collections.ConfigDict, workdir: str,
                  log: Callable[[str], None] = distributed.log) -> pretrain.BaseInit:
  """``pretrain_base`` of ``config`` (validated and typed first, ``settings.from_config``)."""
  return pretrain_base(settings_lib.from_config(config, log), workdir, log)


def run(settings: Settings, workdir: str, resume: bool = False,
        log: Callable[[str], None] = distributed.log) -> dict:
  """Runs every learner of ``settings`` on one stream; writes results.json, plots, a table.

  Everything is checked before anything trains (``prepare``): the data, the devices, the workdir
  and what it already holds (the config itself was checked by ``settings.from_config``). Every
  learner is built (its hyper-parameter values checked) before any of them trains, after the
  base initialisation they may need. results.json keeps the runs of earlier calls in
  ``workdir``. ``settings.log`` names the loggers (``cljax.eval.loggers``) that get each step's
  metrics and evaluation points while the runs go.

  One run writes to a workdir at a time (``cljax.app.workdir.lock``): another run holding it
  makes this one refuse (``ConfigError`` naming its pid and host) before anything is read.
  """
  with _writer_lock(workdir, log):
    return _run(settings, workdir, resume, log)


def _run(settings: Settings, workdir: str, resume: bool, log: Callable[[str], None]) -> dict:
  p = prepare(settings, workdir, resume, log)
  workdir, stream = p.workdir, p.stream
  # Several processes: every one checks the workdir before the primary, alone, writes to it.
  distributed.sync("workdir checked")
  writes = distributed.primary()
  if writes:
    report.write_json(os.path.join(workdir, "experiment.json"), p.record)
  results = {"config": settings.config, "stream": stream.describe(), "runs": dict(p.previous)}
  path = os.path.join(workdir, "results.json")
  t0 = time.perf_counter()
  base = base_model(settings, stream, workdir, log)
  if base is not None:
    results["base_init"] = {"classes": base.classes, "model": settings.model, "kind": base.kind,
                            "dataset": settings.base_init.dataset or "stream",
                            "examples": len(base.x), "test_accuracy": base.test_accuracy}
  inputs = learner_inputs(settings, stream, base)
  built = {spec.name: build_learner(spec, stream.dataset.num_classes, inputs)
           for spec in settings.learners}
  fp = p.record["fingerprint"]
  logger = loggers_lib.make(settings.log if writes else "", workdir)
  try:
    for name, learner in built.items():
      opts = dataclasses.replace(settings.run, mesh=p.mesh,
                                 fingerprint={**fp, **p.record["runs"][name]},
                                 on_divergence=settings.on_divergence,
                                 max_rollbacks=settings.max_rollbacks,
                                 rollback_factor=settings.rollback_factor)
      spec = settings.learner(name)
      rescaled = functools.partial(rescaled_learner, spec, stream.dataset.num_classes, inputs,
                                   learner)
      results["runs"][name] = runner.run_learner(name, learner, stream, opts, workdir,
                                                 resume=resume, log=log, logger=logger,
                                                 rescaled=rescaled)
      results["runs"][name]["base_init"] = base_used(spec, base, settings.base_init.dataset)
      if writes:
        _write_results(path, results, settings.eval)
  finally:
    logger.close()  # what was logged stays on disk on an error or a signal too
  results["wall_s"] = time.perf_counter() - t0
  if not writes:
    _add_omega(results, settings.eval)
    return results
  _write_results(path, results, settings.eval)
  if settings.plots:
    plots = os.path.join(workdir, "plots")
    report.plots(results["runs"], plots, stream.dataset.class_names)
    report.diagnostic_plots(results["runs"], runner.read_predictions(workdir, results["runs"]),
                            plots, stream.dataset.class_names)
  log("\n" + report.table(results["runs"]))
  if base is not None:  # say which runs started from it: a baseline from scratch is no surprise
    log("base initialisation: " + "; ".join(f"{n}: {r.get('base_init', 'none')}"
                                            for n, r in results["runs"].items()))
  log(f"results: {path}")
  return results


def run_experiment(config: ml_collections.ConfigDict, workdir: str, resume: bool = False,
                   log: Callable[[str], None] = distributed.log) -> dict:
  """``run`` of ``config`` (validated and typed first, ``settings.from_config``)."""
  return run(settings_lib.from_config(config, log), workdir, resume, log)


def _add_omega(results: dict, ev: settings_lib.EvalSettings) -> None:
  results_lib.add_omega(results["runs"], reference=ev.omega_reference, topk=ev.omega_topk,
                        points=ev.omega_points)


def _write_results(path: str, results: dict, ev: settings_lib.EvalSettings) -> None:
  _add_omega(results, ev)
  report.write_json(path, results)
