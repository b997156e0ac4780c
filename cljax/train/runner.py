"""The stream runner: walks a stream step by step, drives any learner, evaluates, checkpoints.

Data flows one way: source -> stream -> runner -> learner.update -> checkpoint / metrics -> report.
The runner never knows which method it drives; a learner never reads files.

Per time step t:
  1. every batch of the step: ``state, m = update(state, batch, key)``; anytime evaluation every
     ``eval_every_examples`` examples if set;
  2. ``end_of_step(state, key, remaining_budget)`` if the learner has one;
  3. evaluation on every task's test set -> row t of the accuracy matrix;
  4. a checkpoint of the whole run: learner state, grain iterator state, metrics so far.

Keys are derived from (seed, run name, batch number), never carried, so a run resumed from a
checkpoint draws exactly the keys the uninterrupted run would have drawn.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import zlib
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cljax.data import streams as streams_lib
from cljax.data.sources import DataError
from cljax.eval import metrics as M
from cljax.learner import Learner
from cljax.train import mesh as mesh_lib
from cljax.train.checkpoint import Checkpointer


@dataclasses.dataclass
class RunOptions:
  """How the runner walks the stream (independent of the method).

  batch_size: incoming examples per ``update`` call (1 = one example at a time).
  budget: forward-backward passes allowed per time step (None: each learner's default).
  eval_every_examples: anytime evaluation every this many examples (0: at step ends only).
  eval_batch_size: fixed batch size for prediction on test sets.
  num_devices: devices on the ``data`` mesh axis (None: all).
  max_to_keep: checkpoints kept per learner (>= 2 so a corrupt latest can fall back).
  """

  batch_size: int = 32
  budget: Optional[int] = None
  eval_every_examples: int = 0
  eval_batch_size: int = 250
  num_devices: Optional[int] = None
  max_to_keep: int = 3
  seed: int = 0


class RunError(RuntimeError):
  pass


def _key_for(seed: int, run_name: str) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(run_name.encode()) & 0x7FFFFFFF)


def evaluate(learner: Learner, state, stream: streams_lib.Stream, t: int, batch_size: int,
             mesh=None, full: bool = False) -> dict:
  """Accuracy of ``state`` on every task's test set after step t.

  Returns ``row`` [J] (None for tasks not yet seen), ``accuracy`` (top-1 over the test examples
  of all seen classes, α(t)) and ``A`` (mean of the row over seen tasks). With ``full``, also
  top-5, mean-per-class accuracy, the confusion matrix and per-class precision/recall/F1.
  """
  test = stream.dataset.test
  logits = []
  for x, n in streams_lib.iterate_test(test, batch_size):
    xd = mesh_lib.shard_batch(mesh, {"x": x})["x"] if mesh is not None else x
    logits.append(np.asarray(learner.predict(state, xd))[:n])
  logits = np.concatenate(logits)
  pred = logits.argmax(1)
  correct = pred == test.y
  seen_tasks = stream.tasks_seen(t)
  row = [float(correct[stream.test_index[j]].mean()) if j < seen_tasks else None
         for j in range(len(stream.tasks))]
  seen_idx = np.concatenate([stream.test_index[j] for j in range(seen_tasks)])
  out = {"row": row, "accuracy": float(correct[seen_idx].mean()),
         "A": float(np.mean([r for r in row if r is not None]))}
  if full:
    y = test.y[seen_idx]
    cm = M.confusion_matrix(y, pred[seen_idx], stream.dataset.num_classes)
    out.update(top5=float(M.topk_correct(logits[seen_idx], y, 5).mean()),
               mean_per_class=M.mean_per_class_accuracy(y, pred[seen_idx]),
               confusion_matrix=cm.tolist(),
               **{k: v.tolist() for k, v in M.precision_recall_f1(cm).items()})
  return out


def _check_batch(batch: dict, example_shape: tuple, num_classes: int, where: str):
  """Boundary checks on one batch before any jitted code sees it."""
  x, y = batch["x"], batch["y"]
  if tuple(x.shape[1:]) != tuple(example_shape):
    raise DataError(f"{where}: inputs of shape {tuple(x.shape[1:])}, expected {example_shape}")
  if x.dtype != np.float32:
    raise DataError(f"{where}: inputs must be float32, got {x.dtype}")
  v = batch["valid"]
  if not np.isfinite(x[v]).all():
    raise DataError(f"{where}: NaN or Inf in inputs")
  yl = y[v & batch["labeled"]]
  if yl.size and (yl.min() < 0 or yl.max() >= num_classes):
    raise DataError(f"{where}: label {int(yl.max() if yl.max() >= num_classes else yl.min())} "
                    f"outside [0, {num_classes})")


def _summary(acc_rows: list, task_step: list, steps: list, eval_points: list, final: dict,
             wall: float) -> dict:
  acc = np.asarray([[np.nan if v is None else v for v in row] for row in acc_rows], float)
  n = steps[-1]["examples_seen"] if steps else 0
  return {
      "final_accuracy": M.final_accuracy(acc, task_step),
      "average_accuracy": M.average_accuracy(acc, task_step),
      "forgetting": M.forgetting(acc, task_step),
      "backward_transfer": M.backward_transfer(acc, task_step),
      "final_top1": final.get("accuracy"),
      "final_top5": final.get("top5"),
      "mean_per_class_accuracy": final.get("mean_per_class"),
      "confusion_matrix": final.get("confusion_matrix"),
      "precision": final.get("precision"), "recall": final.get("recall"), "f1": final.get("f1"),
      "accuracy_matrix": acc_rows,
      "steps": steps,
      "eval_points": eval_points,
      "wall_s": wall,
      "examples_per_s": n / wall if wall > 0 else None,
  }


def run_learner(run_name: str, learner: Learner, stream: streams_lib.Stream, opts: RunOptions,
                workdir: str, resume: bool = False,
                log: Callable[[str], None] = print) -> dict:
  """Runs one learner over the whole stream; returns its results (see ``_summary``).

  Checkpoints go to ``workdir/checkpoints/<run_name>/<step>``. With ``resume`` the newest readable
  checkpoint is restored and the run continues from the next step; without it, a folder that
  already holds checkpoints is an error (nothing already written is overwritten).

  The run happens under ``jax.set_mesh(mesh)``, so learners that sample their training batches
  inside jit can split them over the devices (``cljax.ops.sharding.data_rows``).
  """
  mesh = mesh_lib.data_mesh(opts.num_devices)
  with jax.set_mesh(mesh):
    return _run_on_mesh(mesh, run_name, learner, stream, opts, workdir, resume, log)


def _run_on_mesh(mesh, run_name, learner, stream, opts, workdir, resume, log) -> dict:
  ckdir = os.path.join(workdir, "checkpoints", run_name)
  specs = streams_lib.batch_specs(stream, opts.batch_size)
  it = streams_lib.batches(stream, opts.batch_size)
  key = _key_for(opts.seed, run_name)
  k_batch, k_step = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
  first = streams_lib._Loader(stream.dataset.train).map(specs[0])  # pylint: disable=protected-access
  example_shape = stream.dataset.train.example_shape
  state = learner.init(jax.random.fold_in(key, 0), {"x": first["x"], "y": first["y"]})
  num_classes = stream.dataset.num_classes

  steps, acc_rows, eval_points = [], [], []
  examples_seen, batch_no, t_next, wall_before = 0, 0, 0, 0.0
  with Checkpointer(ckdir, max_to_keep=opts.max_to_keep) as ck:
    if ck.steps() and not resume:
      raise RunError(f"{ckdir} already holds checkpoints (steps {ck.steps()}); pass --resume to "
                     "continue that run, or use a new --workdir")
    if resume:
      restored = ck.restore_latest(state)
      if restored is not None:
        step, state, meta = restored
        if meta.get("run_name") != run_name or meta.get("num_batches") != len(specs):
          raise RunError(f"checkpoint in {ckdir} belongs to a different run/stream "
                         f"({meta.get('run_name')}, {meta.get('num_batches')} batches); "
                         "use a new --workdir")
        steps, acc_rows, eval_points = meta["steps"], meta["acc_rows"], meta["eval_points"]
        examples_seen, batch_no, t_next = meta["examples_seen"], meta["batch_no"], step + 1
        wall_before = meta["wall_s"]
        it.set_state(meta["iterator"])
        log(f"[{run_name}] resumed after step {step} ({examples_seen} examples seen)")
        if t_next >= stream.num_steps:
          return meta["result"]
    state = mesh_lib.replicate(mesh, state)
    t0 = time.perf_counter()
    step_t0, step_budget, step_examples = time.perf_counter(), 0.0, 0
    next_eval = ((examples_seen // opts.eval_every_examples) + 1) * opts.eval_every_examples \
        if opts.eval_every_examples else None
    total = stream.num_examples
    for batch in it:
      t = int(batch.pop("step"))
      last = bool(batch.pop("last_in_step"))
      _check_batch(batch, example_shape, num_classes, f"step {t} batch {batch_no}")
      bkey = jax.random.fold_in(k_batch, batch_no)
      state, m = learner.update(state, mesh_lib.shard_batch(mesh, batch), bkey)
      batch_no += 1
      step_budget += float(m["passes"])
      n_valid = int(batch["valid"].sum())
      examples_seen += n_valid
      step_examples += n_valid
      if next_eval is not None and examples_seen >= next_eval and not last:
        ev = evaluate(learner, state, stream, t, opts.eval_batch_size, mesh)
        eval_points.append({"step": t, "examples_seen": examples_seen,
                            "accuracy": ev["accuracy"]})
        next_eval += opts.eval_every_examples
      if not last:
        continue
      if learner.end_of_step is not None:
        remaining = -1 if opts.budget is None else max(opts.budget - int(round(step_budget)), 0)
        state, m = learner.end_of_step(state, jax.random.fold_in(k_step, t),
                                       jnp.int32(remaining))
        step_budget += float(m["passes"])
      if (opts.budget is not None and step_budget > opts.budget + 1e-6
          and learner.hparams.get("respect_budget", True)):
        log(f"[{run_name}] warning: step {t} spent {step_budget:g} passes, over the budget "
            f"{opts.budget}")
      is_final = t == stream.num_steps - 1
      ev = evaluate(learner, state, stream, t, opts.eval_batch_size, mesh, full=is_final)
      acc_rows.append(ev["row"])
      eval_points.append({"step": t, "examples_seen": examples_seen, "accuracy": ev["accuracy"]})
      now = time.perf_counter()
      wall = now - step_t0
      steps.append({"step": t, "accuracy": ev["A"], "accuracy_seen": ev["accuracy"],
                    "examples_seen": examples_seen, "wall_s": wall,
                    "examples_per_s": step_examples / wall if wall > 0 else None,
                    "budget_used": step_budget})
      elapsed = wall_before + now - t0
      done_frac = examples_seen / total
      eta = elapsed / done_frac * (1 - done_frac) if done_frac > 0 else float("nan")
      log(f"[{run_name}] step {t + 1}/{stream.num_steps} | {examples_seen}/{total} ex | "
          f"A(t)={ev['A']:.4f} | {step_examples / wall:,.0f} ex/s | budget {step_budget:g} | "
          f"ETA {eta:.0f}s")
      meta = {"run_name": run_name, "num_batches": len(specs), "steps": steps,
              "acc_rows": acc_rows, "eval_points": eval_points, "examples_seen": examples_seen,
              "batch_no": batch_no, "wall_s": elapsed, "iterator": it.get_state(), "seed": opts.seed}
      if is_final:
        meta["result"] = _summary(acc_rows, stream.task_step, steps, eval_points, ev, elapsed)
      ck.save(t, state, meta)
      step_t0, step_budget, step_examples = time.perf_counter(), 0.0, 0
    ck.wait()
  if not steps or len(acc_rows) != stream.num_steps:
    raise RunError(f"[{run_name}] the stream ended after {len(acc_rows)} of "
                   f"{stream.num_steps} steps")
  return meta["result"]


def stream_hparams(learner_name: str, stream: streams_lib.Stream, opts: RunOptions) -> dict:
  """Hyper-parameters the runner supplies from the stream, for factories that accept them."""
  from cljax import learners  # pylint: disable=import-outside-toplevel
  accepted = set(learners.hparam_names(learner_name))
  offer = {"num_classes": stream.dataset.num_classes, "max_step_size": stream.max_step_size,
           "stream_size": stream.num_examples}
  return {k: v for k, v in offer.items() if k in accepted}


def add_omega(runs: dict, reference: str = "offline") -> None:
  """Adds ``omega`` to every run, against run ``reference`` (None when it was not run)."""
  ref = runs.get(reference)
  for r in runs.values():
    if ref is None:
      r["omega"] = None
      continue
    a = [p["accuracy"] for p in r["eval_points"]]
    b = [p["accuracy"] for p in ref["eval_points"]]
    r["omega"] = M.omega(a, b) if len(a) == len(b) else None


def default_log(msg: str) -> None:
  print(msg, flush=True, file=sys.stdout)
