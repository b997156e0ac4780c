"""Typed settings: the config, checked once where the binary starts, as frozen records.

``from_config(config, log)`` is the one place an ``ml_collections.ConfigDict`` (schema:
``cljax.app.config_schema.base_config``) is read: it validates every key and value (``validate``:
``ConfigError`` naming the key and the valid values, before anything is loaded or trained),
resolves what the config leaves to the machine (``resolve``: a ``base_init.dataset`` of the form
``"NAME?"``), and returns a ``Settings``. Below this module nothing reads the config: the stream,
the base initialisation, the runner, the evaluation and each run's learner get their own record.

    Settings
      stream     StreamSettings     data set and how it is cut into time steps
      base_init  BaseInitSettings   the base network (model, its kwargs, the seed included)
      run        runner.RunOptions  how the runner walks the stream (the mesh is added once built)
      eval       EvalSettings       anytime evaluation and Ω
      learners   (LearnerSpec, ...) each run: its name, learner and hyper-parameters
      config     dict               the resolved config as a dict (results.json, the fingerprint)
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Mapping, Optional

import ml_collections

from cljax import data as data_lib
from cljax import learners as learners_lib
from cljax import models as models_lib
from cljax import optim
from cljax.app.config_schema import FREE_GROUPS, ON_DIVERGENCE, ConfigError, base_config
from cljax.app.runner import RunOptions
from cljax.eval import loggers as loggers_lib
from cljax.eval import results as results_lib
from cljax.ops import augment
from cljax.train import early_stop as early_stop_lib
from cljax.train import pretrain


@dataclasses.dataclass(frozen=True)
class StreamSettings:
  """The data set and its stream (``cljax.data.make_stream``'s arguments).

  dataset / dataset_kwargs: the data set's name and its loader's keyword arguments.
  seed: the stream's seed (``stream.seed``, or the experiment's when that is -1).
  max_examples_per_step: None for no cap. first_step_classes: ``base_init.classes`` (step 0 holds
  the base classes).
  """

  dataset: str
  dataset_kwargs: Mapping
  ordering: str
  classes_per_step: int
  num_steps: int
  label_rate: float
  seed: int
  max_examples_per_step: Optional[int]
  first_step_classes: int
  label_noise: float
  val_fraction: float = 0.0
  val_folds: int = 0
  val_fold: int = 0


@dataclasses.dataclass(frozen=True)
class BaseInitSettings:
  """The base initialisation (``cljax.app.base_init.build``); see ``config_schema``'s comments.

  dataset: resolved (never ``"NAME?"``); dataset_kwargs: the stream's loader arguments when
  ``dataset`` is the stream's data set, else empty. model / model_kwargs: the network trained.
  seed: the experiment's seed (the key derives from it).
  """

  kind: str
  classes: int
  checkpoint: str
  dataset: str
  dataset_kwargs: Mapping
  epochs: float
  lr: float
  batch_size: int
  optimizer: str
  momentum: float
  weight_decay: float
  lr_milestones: tuple
  lr_factor: float
  augment: str
  crop_padding: int
  mask_ratio: float
  model: str
  model_kwargs: Mapping
  seed: int

  @property
  def active(self) -> bool:
    """Whether a base initialisation is asked for."""
    return self.classes > 0 or self.kind == "mae" or bool(self.checkpoint) or bool(self.dataset)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """Evaluation and Ω (``cljax.eval.results.add_omega``).

  every_examples: anytime evaluation every this many examples (0: step ends only).
  batch_size: prediction batch size. omega_topk / omega_points: how Ω is computed.
  omega_reference: the run Ω compares against ("" for none).
  """

  every_examples: int
  batch_size: int
  omega_topk: int
  omega_points: str
  omega_reference: str


@dataclasses.dataclass(frozen=True)
class LearnerSpec:
  """One run: ``name`` (its name in results.json and the workdir), ``learner`` (the registry
  name) and ``hparams`` (its hyper-parameters from the config, without ``learner``)."""

  name: str
  learner: str
  hparams: Mapping


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything an experiment needs, typed (module docstring).

  model / model_kwargs / batch_size: what learners that declare those inputs get
  (``cljax.learners.INPUTS``). num_devices: 0 for all; num_processes: the run's JAX processes.
  plots: write PNGs; log: the loggers' spec (``cljax.eval.loggers.make``).
  on_divergence / max_rollbacks / rollback_factor: what a divergence does (``config_schema``'s
    comment).
  """

  config: Mapping
  stream: StreamSettings
  base_init: BaseInitSettings
  run: RunOptions
  eval: EvalSettings
  learners: tuple
  model: str
  model_kwargs: Mapping
  batch_size: int
  num_devices: int
  num_processes: int
  plots: bool
  log: str
  on_divergence: str = "stop"
  max_rollbacks: int = 3
  rollback_factor: float = 0.5

  @property
  def run_names(self) -> list:
    return [spec.name for spec in self.learners]

  def learner(self, name: str) -> LearnerSpec:
    """The spec of run ``name`` (KeyError naming the runs otherwise)."""
    for spec in self.learners:
      if spec.name == name:
        return spec
    raise KeyError(f"no run {name!r}; runs: {self.run_names}")


# --- validation ---------------------------------------------------------------------------------


def validate(config: ml_collections.ConfigDict) -> None:
  """Unknown keys, names or values -> ConfigError listing the valid ones (nothing is loaded or
  trained before this passes)."""
  base = base_config()

  def check(cfg, ref, prefix):
    for k in cfg.keys():
      if k not in ref:
        raise ConfigError(f"unknown config key {prefix + k!r}; valid keys: "
                          f"{sorted(prefix + x for x in ref.keys())}")
      if isinstance(ref[k], ml_collections.ConfigDict) and k not in FREE_GROUPS:
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
  _number("eval.val_fraction", config.eval.val_fraction, 0.0, 1.0, float, "in [0, 1)",
          open_high=True)
  if config.eval.val_folds:
    _number("eval.val_folds", config.eval.val_folds, 2, hint=" (0: no k-fold split)")
    _number("eval.val_fold", config.eval.val_fold, 0, config.eval.val_folds - 1)
    if config.eval.val_fraction:
      raise ConfigError("eval.val_fraction and eval.val_folds both set: hold out a fraction or "
                        "a fold, not both (set the other to 0)")
  _number("max_rollbacks", config.max_rollbacks, 0)
  _number("rollback_factor", config.rollback_factor, 0.0, 1.0, float, "in (0, 1)",
          open_low=True, open_high=True)
  _number("eval.latency_calls", config.eval.latency_calls, 0, hint=" (0: latency not measured)")
  _number("eval.early_stop_every", config.eval.early_stop_every, 0, hint=" (0: off)")
  _number("eval.early_stop_patience", config.eval.early_stop_patience, 1)
  if config.eval.early_stop_metric not in early_stop_lib.METRICS:
    raise ConfigError(f"unknown eval.early_stop_metric {config.eval.early_stop_metric!r}; "
                      f"valid: {list(early_stop_lib.METRICS)}")
  if config.eval.early_stop_every and not (config.eval.val_fraction or config.eval.val_folds):
    raise ConfigError("eval.early_stop_every needs a validation split to score on: set "
                      "eval.val_fraction (e.g. 0.1) or eval.val_folds, or early_stop_every=0")
  if config.on_divergence not in ON_DIVERGENCE:
    raise ConfigError(f"on_divergence must be one of {list(ON_DIVERGENCE)}, got "
                      f"{config.on_divergence!r}")
  if config.eval.omega_topk not in results_lib.OMEGA_TOPK:
    raise ConfigError(f"eval.omega_topk must be one of {results_lib.OMEGA_TOPK}, got "
                      f"{config.eval.omega_topk!r}")
  if config.eval.omega_points not in results_lib.OMEGA_POINTS:
    raise ConfigError(f"eval.omega_points must be one of {list(results_lib.OMEGA_POINTS)}, got "
                      f"{config.eval.omega_points!r}")
  if not isinstance(config.eval.omega_reference, str):
    raise ConfigError(f"eval.omega_reference must be a run name or '' (no Ω), got "
                      f"{config.eval.omega_reference!r}")
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
  name = str(b.dataset)[:-1] if str(b.dataset).endswith("?") else str(b.dataset)
  if name and name not in data_lib.names() and not name.startswith("tfds:"):
    raise ConfigError(f"unknown base_init.dataset {b.dataset!r}; valid: {data_lib.names()} "
                      "(NAME? for NAME when it loads, else the stream's images)")
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


# --- resolution and the typed records -----------------------------------------------------------


def resolve(config: ml_collections.ConfigDict, log: Callable[[str], None]
            ) -> ml_collections.ConfigDict:
  """The config with what it leaves to the machine decided, and logged (a copy when anything
  changes): ``base_init.dataset = "NAME?"`` becomes ``NAME`` when that data set loads here, else
  ``""`` (the stream's own images). A config file never looks at the file system; this runs when
  the experiment starts, before its fingerprint is taken."""
  want = str(config.base_init.dataset)
  if not want.endswith("?"):
    return config
  name = want[:-1]
  kw = config.dataset_kwargs.to_dict() if name == config.dataset else {}
  try:
    data_lib.load(name, **kw)
    use = name
    log(f"[base_init] dataset {want!r}: {name} is available, its training images are the base "
        "set")
  except data_lib.DataError as e:
    use = ""
    why = " ".join(str(e).split())[:160]
    log(f"[base_init] dataset {want!r}: {name} is not available ({why}); the stream's own "
        "images are the base set")
  out = copy.deepcopy(config)
  out.base_init.dataset = use
  return out


def from_config(config: ml_collections.ConfigDict,
                log: Callable[[str], None] = lambda msg: None) -> Settings:
  """Validates ``config``, resolves it (``resolve``, logging the decisions) and returns its
  typed ``Settings``. ConfigError (one line) for a bad config."""
  validate(config)
  config = resolve(config, log)
  s, b, e = config.stream, config.base_init, config.eval
  seed = int(config.seed)
  mkw = config.model_kwargs.to_dict()
  dkw = config.dataset_kwargs.to_dict()
  stream = StreamSettings(
      dataset=str(config.dataset), dataset_kwargs=dkw, ordering=str(s.ordering),
      classes_per_step=int(s.classes_per_step), num_steps=int(s.num_steps),
      label_rate=float(s.label_rate), seed=seed if s.seed < 0 else int(s.seed),
      max_examples_per_step=int(s.max_examples_per_step) or None,
      first_step_classes=int(b.classes), label_noise=float(s.label_noise),
      val_fraction=float(e.val_fraction), val_folds=int(e.val_folds), val_fold=int(e.val_fold))
  base = BaseInitSettings(
      kind=str(b.kind), classes=int(b.classes), checkpoint=str(b.checkpoint),
      dataset=str(b.dataset), dataset_kwargs=dict(dkw) if b.dataset == config.dataset else {},
      epochs=float(b.epochs), lr=float(b.lr), batch_size=int(b.batch_size),
      optimizer=str(b.optimizer), momentum=float(b.momentum),
      weight_decay=float(b.weight_decay), lr_milestones=tuple(b.lr_milestones),
      lr_factor=float(b.lr_factor), augment=str(b.augment), crop_padding=int(b.crop_padding),
      mask_ratio=float(b.mask_ratio), model=str(config.model), model_kwargs=dict(mkw), seed=seed)
  run = RunOptions(
      batch_size=int(s.batch_size), budget=config.budget.passes_per_step,
      eval_every_examples=int(e.every_examples), eval_batch_size=int(e.batch_size),
      num_devices=int(config.num_devices) or None,
      max_to_keep=int(config.checkpoint.max_to_keep), seed=seed,
      latency_calls=int(e.latency_calls), early_stop_every=int(e.early_stop_every),
      early_stop_patience=int(e.early_stop_patience),
      early_stop_metric=str(e.early_stop_metric))
  ev = EvalSettings(every_examples=int(e.every_examples), batch_size=int(e.batch_size),
                    omega_topk=int(e.omega_topk), omega_points=str(e.omega_points),
                    omega_reference=str(e.omega_reference))
  learners = tuple(LearnerSpec(n, learner_of(config, n), _hparams_of(config, n))
                   for n in run_names(config))
  return Settings(config=config.to_dict(), stream=stream, base_init=base, run=run, eval=ev,
                  learners=learners, model=str(config.model), model_kwargs=mkw,
                  batch_size=int(config.budget.batch_size),
                  num_devices=int(config.num_devices),
                  num_processes=int(config.num_processes), plots=bool(config.plots),
                  log=str(config.log), on_divergence=str(config.on_divergence),
                  max_rollbacks=int(config.max_rollbacks),
                  rollback_factor=float(config.rollback_factor))
