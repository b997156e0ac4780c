"""The experiment config's schema: every key an experiment understands, with its default.

Imports only ml_collections, so a config file (``experiments/configs/*.py``: ``base_config()``
and the changes it needs) is data: loading it imports no jax and touches no file. The config is
checked (``cljax.app.settings.validate``) and turned into typed settings
(``cljax.app.settings.from_config``) where the binary starts; only those travel down.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# What a run does when a learner diverges (``on_divergence``; cljax.app.runner).
ON_DIVERGENCE = ("stop", "rollback")

# Keys whose groups take any keys (values passed on as keyword arguments).
FREE_GROUPS = ("hparams", "dataset_kwargs", "model_kwargs")


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
  # omega_reference: the run Ω compares every run against ("" for no Ω); a run of this
  # experiment or of an earlier call in the workdir. The default, "offline", may be absent (then
  # Ω is None); any other name must be a run.
  # val_fraction: fraction of each class of each step held out of training as the validation
  # split (stratified, seed-determined, the same rows for every learner); with it every step
  # record gains val_loss and val_accuracy. val_folds / val_fold: hold out fold val_fold of a
  # stratified val_folds-fold split of the training rows instead (experiments/studies/kfold.py).
  # latency_calls: batch-1 `update` calls timed on a copy of each learner's final state for
  # latency_ms (median, p99) in results.json and the table (0: not measured).
  # early_stop_every: early stopping at step ends (needs a validation split): learners that
  # train at step ends (finetune, finetune_kading, er, offline, gdumb, ewc, mas, lwf, icarl,
  # dietcl, er_diet, joint, l2p, siesta, cassle, ccic, dualnet; their Learner.early_stopping)
  # score
  # their model on the validation rows of steps 0..t every this many passes (0: off), stop
  # after early_stop_patience scores without improvement and keep the step's best model;
  # early_stop_metric: "loss" (cross-entropy) or "error". Each step record's extra gains
  # passes_saved and best_pass; the table gains saved (passes saved over the run).
  c.eval = ml_collections.ConfigDict(dict(every_examples=0, batch_size=250, omega_topk=1,
                                          omega_points="step_ends", omega_reference="offline",
                                          val_fraction=0.0, val_folds=0, val_fold=0,
                                          latency_calls=100, early_stop_every=0,
                                          early_stop_patience=3, early_stop_metric="loss"))
  # What a run does when a learner diverges (its loss or parameters non-finite, or its loss
  # orders of magnitude above its value at the step's start): "stop" (one line `error: ...`,
  # exit status 2, the saved steps kept) or "rollback" (restore the last good step, multiply that
  # learner's learning rates by rollback_factor (0.5: halve them) and go on; at most
  # max_rollbacks times per run, then stop; recorded as `rollbacks` in results.json and the
  # table). A rate orders of magnitude too high needs a deeper cut: rollback_factor=0.01.
  c.on_divergence = "stop"
  c.max_rollbacks = 3
  c.rollback_factor = 0.5
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
  #     data set name whose train split is the base set; "NAME?" uses NAME when it loads (e.g.
  #     installed on this machine), else acts as "": decided and logged when the experiment
  #     starts (cljax.app.settings.resolve), and results.json's base_init.dataset says which.
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
  """A config (or a workdir that does not fit it) that cannot run; the message is one line."""
