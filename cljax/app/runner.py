"""The stream runner: walks a stream step by step, drives any learner, evaluates, checkpoints.

Data flows one way: source -> stream -> runner -> learner.update / end_of_step -> checkpoint /
metrics -> report. The runner never knows which method it drives; a learner never reads files.

Per time step t:
  1. every batch of the step: ``state, info = update(state, batch, key)``; anytime evaluation
     every ``eval_every_examples`` examples if set;
  2. ``end_of_step(state, key, remaining budget)`` (``None`` when no budget is set), with
     ``early_stop`` (``early_stopping``: the validation split of steps 0..t) when
     ``RunOptions.early_stop_every`` is set and the learner takes it;
  3. evaluation on every task's test set -> row t of the accuracy matrix, the test loss, and the
     validation loss and accuracy when the stream holds rows out (``evaluate``);
  4. the divergence check (``divergence``): stop (``Diverged``) or roll back, per
     ``RunOptions.on_divergence``;
  5. a checkpoint of the whole run: learner state, grain iterator state, metrics so far.

After the last step: the state's bytes, the batch-1 ``update`` latency (on a copy of the state),
and the final model's predictions for the diagnostic plots (``predictions``).

The runner drives the bare jitted functions (``cljax.learners.get(..., checked=False)``) after its
own checks. Its overhead is kept off the per-batch path: batches arrive in chunks (one gather and
one check per chunk), batch keys are derived 16 at a time (one call per group), and the passes
each call reports stay on device until the step ends (summed 16 calls at a time, no per-batch
host sync), so dispatch stays asynchronous.

Keys are derived from (seed, run name, batch number), never carried, so a run resumed from a
checkpoint draws exactly the keys the uninterrupted run would have drawn. Everything else the rest
of the run depends on (the grain iterator's position, the next anytime-evaluation point, metrics
and counters so far) is in each checkpoint's metadata, so a run resumed from any saved step ends
bit-identical to the uninterrupted one (timings aside). Each checkpoint also records the run's
fingerprint (``fingerprint``): a resume under another configuration is refused, naming the keys
that differ.

Besides ``passes`` and ``loss``, every ``Info.extra`` figure a learner reports is recorded: per
step, the mean over the step's ``update`` and ``end_of_step`` calls that reported it (finite
values; NaN means "nothing to report"), in the step's record (``extra: {name: mean}``) and the
loggers (``extra/<name>``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cljax import learner as contract
from cljax.data import streams as streams_lib
from cljax.data.sources import DataError
from cljax.eval import loggers as loggers_lib
from cljax.eval import metrics as M
from cljax.eval import results as results_lib
from cljax.learner import Learner
from cljax.ops import sharding as sharding_lib
from cljax.train import early_stop as early_stop_lib
from cljax import progress as progress_lib
from cljax.app import distributed
from cljax.app.checkpoint import Checkpointer
from cljax.app.workdir import flatten, fingerprint_diff
from cljax.train import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How the runner walks the stream (independent of the method).

  batch_size: incoming examples per ``update`` call (1 = one example at a time).
  budget: forward-backward passes allowed per time step (None: each learner's default).
  eval_every_examples: anytime evaluation every this many examples (0: at step ends only).
  eval_batch_size: fixed batch size for prediction on test sets.
  num_devices: devices on the ``data`` mesh axis (None: all).
  mesh: the ``data`` mesh to run on, built once by the caller (None: built from num_devices).
  max_to_keep: checkpoints kept per learner (>= 2 so a corrupt latest can fall back).
  seed: the run's seed (keys derive from it and the run name).
  fingerprint: what else defines the run (e.g. the experiment's data set, stream, learner and
    hyper-parameters; flat JSON-able dict), saved with every checkpoint and compared on resume
    together with the options above.
  on_divergence: "stop" (a diverged learner stops the run: ``Diverged``) or "rollback" (its last
    good step is restored, its learning rates multiplied by ``rollback_factor`` (0.5: halved),
    and the run goes on; at most
    ``max_rollbacks`` times, then it stops). Neither is part of the fingerprint: a stopped run
    may resume with them.
  latency_calls: batch-1 ``update`` calls timed after the last step for ``latency_ms`` (0: none).
  early_stop_every / early_stop_patience / early_stop_metric: early stopping at step ends
    (``cljax.train.early_stop``) on the stream's validation split of steps 0..t, for learners
    with ``early_stopping``: scored every this many passes (0: off), stopped after ``patience``
    scores without improvement, by ``loss`` (cross-entropy) or ``error``. Needs a validation
    split (``Stream.has_validation``). Part of the fingerprint when on.
  """

  batch_size: int = 32
  budget: Optional[int] = None
  eval_every_examples: int = 0
  eval_batch_size: int = 250
  num_devices: Optional[int] = None
  max_to_keep: int = 3
  seed: int = 0
  fingerprint: Optional[dict] = None
  mesh: Optional[jax.sharding.Mesh] = None
  on_divergence: str = "stop"
  max_rollbacks: int = 3
  rollback_factor: float = 0.5
  latency_calls: int = 100
  early_stop_every: int = 0
  early_stop_patience: int = 3
  early_stop_metric: str = "loss"


class RunError(RuntimeError):
  """The run cannot go on as asked (e.g. a resume under another configuration)."""


class Diverged(RunError):
  """A learner diverged (``divergence``) and the run stopped: one line naming the run, the step,
  the loss and the way out. The steps saved before it are kept."""


# Divergence (``divergence``): a training loss above EXPLODE times its reference (the loss at
# the step's start: its first finite loss, or the previous step's when that is lower, as when
# the blow-up happened at the step boundary; at least ln K, the loss of a uniform guess over
# the K classes), an infinite loss, or a non-finite parameter. The ln K floor keeps a learner
# whose loss starts a step near 0 from tripping on an ordinary rise; ER at lr 1e6 on digits
# reaches 4.7e21.
EXPLODE = 1e3


class Interrupted(BaseException):
  """A stop asked for by a signal (the binaries' SIGTERM/SIGINT handler, ``cljax.app.cli``).

  ``run_learner`` lets the checkpoint in flight finish, then raises it with ``run_name``,
  ``saved_step`` (the newest step on disk, None if none), ``num_steps`` and ``directory`` set.
  A BaseException, like KeyboardInterrupt, so no ``except Exception`` swallows it.
  """

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum
    self.run_name: Optional[str] = None
    self.saved_step: Optional[int] = None
    self.num_steps: Optional[int] = None
    self.directory: Optional[str] = None


# The signal number of a stop asked for, or None. The handler raises Interrupted at once (so a
# long end of step or evaluation is cut short), but an exception raised by a signal handler can
# land anywhere: inside a garbage-collector callback it is printed and dropped, inside library
# code it may come out as another exception. So the request is also kept here: the runner checks
# it after every chunk of batches, and treats any exception escaping while it is set as the stop.
_STOP: list = [None]


def request_stop(signum: Optional[int]) -> None:
  """Asks the runner to stop (``signum``) or clears the request (None)."""
  _STOP[0] = signum


def stop_requested() -> Optional[int]:
  return _STOP[0]


def check_stop() -> None:
  """Raises Interrupted if a stop was asked for (a safe point between two pieces of work; in a
  multi-process run, a collective: every process stops if any was asked to)."""
  signum = distributed.agree(_STOP[0] or 0) if distributed.count() > 1 else _STOP[0]
  if signum:
    request_stop(signum)
    raise Interrupted(signum)


def run_fingerprint(run_name: str, stream: streams_lib.Stream, opts: RunOptions) -> dict:
  """What a checkpoint of this run must match to be resumed (flat, JSON-able)."""
  fp = {"run_name": run_name, "stream": stream.describe(),
        "num_batches": streams_lib.num_batches(stream, opts.batch_size),
        "batch_size": opts.batch_size, "budget": opts.budget,
        "eval_every_examples": opts.eval_every_examples, "seed": opts.seed}
  if opts.early_stop_every:
    fp.update(early_stop_every=opts.early_stop_every,
              early_stop_patience=opts.early_stop_patience,
              early_stop_metric=opts.early_stop_metric)
  fp.update(json.loads(json.dumps(flatten(opts.fingerprint or {}))))
  return fp


def _key_for(seed: int, run_name: str) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(run_name.encode()) & 0x7FFFFFFF)


_CHUNK = 256  # batches per chunk at most (streams.chunk_specs)
# Info figures are summed on device in groups of this many calls: one fixed-shape call per group
# (no host sync, no recompile). A program's XLA compile time on CPU grows with its number of
# operands (one 256-operand sum took 0.5 s to compile); 16 compiles in about 0.05 s and costs one
# dispatch per 16 batches.
_GROUP = 16


@jax.jit
def _group_keys(key: jax.Array, first: jax.Array) -> tuple:
  """The keys of batches ``first`` .. ``first + _GROUP - 1``: ``fold_in(key, batch)`` each (the
  same bits as one ``fold_in`` per batch), as _GROUP separate key arrays, one call per _GROUP
  batches. (One call per batch cost about 23 us a batch on 2 CPU cores, this about 6 us: most of
  it is making each output array. A program with 256 key outputs compiles for 3-16 s.)"""
  keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(
      first + jnp.arange(_GROUP, dtype=jnp.uint32))
  return tuple(keys[i] for i in range(_GROUP))


def _chunk_keys(key: jax.Array, first: int, n: int) -> list:
  """The keys of batches ``first`` .. ``first + n - 1`` (``_group_keys``, one call per group)."""
  out = []
  for g in range(0, n, _GROUP):
    out.extend(_group_keys(key, np.uint32(first + g)))
  return out[:n]


@jax.jit
def _sum_group(values: dict) -> dict:
  """{part: {name: [sum of the finite values, their number, the largest of them (-inf if none),
  the first of them (NaN if none), the number of infinite values]}} of figures
  ``values[part][name]`` of up to _GROUP calls (each value reduced to its mean when not a
  scalar; NaN means "nothing to report", e.g. a loss of a call that trained nothing). The last
  three watch the loss for ``divergence``."""
  out = {}
  for part, figures in values.items():
    out[part] = {}
    for name, vs in figures.items():
      v = jnp.stack([jnp.mean(jnp.asarray(x, jnp.float32)) for x in vs])
      ok = jnp.isfinite(v)
      out[part][name] = jnp.stack([jnp.sum(jnp.where(ok, v, 0.0)),
                                   jnp.sum(ok.astype(jnp.float32)),
                                   jnp.max(jnp.where(ok, v, -jnp.inf)),
                                   jnp.where(jnp.any(ok), v[jnp.argmax(ok)], jnp.nan),
                                   jnp.sum(jnp.isinf(v).astype(jnp.float32))])
  return out


@jax.jit
def _all_finite(state) -> jax.Array:
  """Whether every floating-point leaf of ``state`` is finite (one bool)."""
  leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(state)
            if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


class LossWatch(NamedTuple):
  """A step's training losses as ``divergence`` sees them (``_step_totals``): the largest finite
  one (-inf if none), the first finite one (the loss at the step's start; None if none), and
  the number of infinite ones."""

  top: float
  first: Optional[float]
  infinite: int


def divergence(watch: LossWatch, end_loss: float, params_finite: bool, num_classes: int,
               previous: Optional[float] = None) -> Optional[tuple]:
  """(reason, loss) when a step diverged, else None.

  ``watch``: the step's ``update`` losses; ``end_loss``: the ``end_of_step`` loss (NaN: none);
  ``params_finite``: ``_all_finite`` of the state after the step; ``previous``: the start loss
  of the last good step (None: none). Divergence: a non-finite parameter, an infinite loss, or a
  training loss above ``EXPLODE`` times the reference max(min(the step's first finite loss,
  ``previous``), ln K). The test loss is not a sign: a learner that masks the classes it has no
  label of yet (DietCL under sparse labels) gives their test examples a finite but huge
  cross-entropy (8e8 in the dietcl config's reduced run) while training normally; a blow-up in
  a step's last updates shows in the next step's training loss (``previous``) or its parameters.
  """
  firsts = [f for f in (watch.first, previous) if f is not None]
  losses = [x for x in (watch.top, end_loss) if np.isfinite(x)]
  top = max(losses) if losses else float("nan")
  if not params_finite:
    return ("its parameters are no longer finite (NaN or Inf)", top)
  if watch.infinite or np.isinf(end_loss):
    return ("its loss is infinite", float("inf"))
  chance = float(np.log(max(num_classes, 2)))
  ref = max(min(firsts) if firsts else 0.0, chance)
  if losses and top > EXPLODE * ref:
    start = f"{min(firsts):.3g} at the step's start" if firsts else "no loss at its start"
    return (f"its loss exploded to {top:.3g} ({start}, over {EXPLODE:g}x that or ln K)", top)
  return None


_NAN = np.float32(np.nan)


def _chunk_sums(infos: list) -> list:
  """``_sum_group`` of a chunk's ``Info``s, one fixed-shape call per _GROUP of them (the last
  one padded with NaN): ``passes`` and ``loss`` in part ``info``, the ``Info.extra`` figures in
  part ``extra`` (calls that do not report a figure count as NaN)."""
  names = sorted({k for i in infos for k in i.extra})
  out = []
  for g in range(0, len(infos), _GROUP):
    group = infos[g:g + _GROUP]
    pad = (_NAN,) * (_GROUP - len(group))
    out.append(_sum_group({
        "info": {"passes": tuple(i.passes for i in group) + pad,
                 "loss": tuple(i.loss for i in group) + pad},
        "extra": {k: tuple(i.extra.get(k, _NAN) for i in group) + pad for k in names}}))
  return out


def _step_totals(sums: list) -> tuple:
  """(passes spent, sum of the finite losses, their number, {name: [sum, number]} of the
  extras, the losses' ``LossWatch``) over a step's ``_chunk_sums`` (one transfer to the host,
  at the step's end)."""
  tot: dict = {"info": {"passes": [0.0, 0.0], "loss": [0.0, 0.0]}, "extra": {}}
  top, first, infinite = -np.inf, None, 0
  for group in jax.device_get(sums):
    for part, figures in group.items():
      for k, (v, n, *_) in figures.items():
        a = tot[part].setdefault(k, [0.0, 0.0])
        a[0], a[1] = a[0] + float(v), a[1] + float(n)
    _, _, g_top, g_first, g_inf = (float(x) for x in group["info"]["loss"])
    top, infinite = max(top, g_top), infinite + int(g_inf)
    if first is None and np.isfinite(g_first):
      first = g_first
  (passes, _), (loss_sum, loss_n) = tot["info"]["passes"], tot["info"]["loss"]
  return passes, loss_sum, loss_n, tot["extra"], LossWatch(top, first, infinite)


def _step_extras(tot: dict, end_info) -> dict:
  """{name: mean over the step's calls} from ``_step_totals``' extras and the ``end_of_step``
  Info (None where no call gave a finite value)."""
  tot = {k: list(v) for k, v in tot.items()}
  for k, v in jax.device_get(dict(end_info.extra)).items():
    v = float(np.mean(np.asarray(v, np.float64)))
    a = tot.setdefault(k, [0.0, 0.0])
    if np.isfinite(v):
      a[0], a[1] = a[0] + v, a[1] + 1
  return {k: (v / n if n else None) for k, (v, n) in sorted(tot.items())}


def _predict(learner: Learner, state, batches, mesh=None) -> np.ndarray:
  """[M, K] logits of ``state`` over ``batches`` ((x [B, ...], n valid rows) pairs of one fixed
  size), as numpy (float32)."""
  return _logits(lambda x: learner.predict(state, x), batches, mesh)


def _logits(logits_of: Callable, batches, mesh=None) -> np.ndarray:
  """[M, K] logits of ``logits_of(x)`` over ``batches`` (as ``_predict``'s), as numpy."""
  logits, sizes = [], []
  for x, n in batches:
    xd = mesh_lib.shard_batch(mesh, {"x": x})["x"] if mesh is not None else x
    logits.append(logits_of(xd))
    sizes.append(n)
  if not logits:
    return np.zeros((0, 0), np.float32)
  # One gather of all the logits (a collective when other processes hold parts of them).
  return np.concatenate([l[:n] for l, n in zip(distributed.to_host(logits), sizes)])


def evaluate(learner: Learner, state, stream: streams_lib.Stream, t: int, batch_size: int,
             mesh=None, full: bool = False) -> dict:
  """Accuracy and loss of ``state`` on every task's test set after step t.

  Returns ``row`` [J] (None for tasks not yet seen), ``accuracy`` and ``top5`` (top-1 and top-5
  over the test examples of all seen classes: α(t) of Ω), ``A`` (mean of the row over seen
  tasks) and ``test_loss`` (mean cross-entropy over the test examples of all seen classes);
  with a validation split (``stream.has_validation``), ``val_loss`` and ``val_accuracy`` on the
  held-out rows of steps 0..t. With ``full``, also mean-per-class accuracy, the confusion matrix,
  per-class precision/recall/F1, ``roc_auc`` (macro, one-vs-rest) and ``roc_auc_per_class``,
  ``ece`` (15 bins), and ``y`` / ``scores``: the seen classes' test labels and logits.
  """
  test = stream.dataset.test
  logits = _predict(learner, state, streams_lib.iterate_test(test, batch_size), mesh)
  pred = logits.argmax(1)
  correct = pred == test.y
  seen_tasks = stream.tasks_seen(t)
  row = [float(correct[stream.test_index[j]].mean()) if j < seen_tasks else None
         for j in range(len(stream.tasks))]
  seen_idx = np.concatenate([stream.test_index[j] for j in range(seen_tasks)])
  y = test.y[seen_idx]
  out = {"row": row, "accuracy": float(correct[seen_idx].mean()),
         "top5": float(M.topk_correct(logits[seen_idx], y, 5).mean()),
         "A": float(np.mean([r for r in row if r is not None])),
         "test_loss": M.cross_entropy(logits[seen_idx], y)}
  if stream.has_validation:
    vi = stream.val_index(t)
    vy = stream.dataset.train.y[vi].astype(np.int64)
    vl = _predict(learner, state, streams_lib.iterate_test(stream.dataset.train, batch_size,
                                                            vi), mesh)
    out.update(val_loss=M.cross_entropy(vl, vy),
               val_accuracy=float((vl.argmax(1) == vy).mean()) if len(vy) else None)
  if full:
    cm = M.confusion_matrix(y, pred[seen_idx], stream.dataset.num_classes)
    finite = bool(np.isfinite(logits[seen_idx]).all())
    auc = M.roc_auc(y, logits[seen_idx]) if finite else None
    out.update(mean_per_class=M.mean_per_class_accuracy(y, pred[seen_idx]),
               confusion_matrix=cm.tolist(),
               **{k: v.tolist() for k, v in M.precision_recall_f1(cm).items()},
               roc_auc=auc["macro"] if auc else None,
               roc_auc_per_class=auc["per_class"] if auc else None,
               ece=M.expected_calibration_error(y, logits[seen_idx]) if finite else None,
               y=y, scores=logits[seen_idx])
  return out


def early_stopping(stream: streams_lib.Stream, t: int, opts: RunOptions,
                   mesh=None) -> Optional[early_stop_lib.EarlyStopping]:
  """The ``EarlyStopping`` of step t: scored on the validation split of steps 0..t (the rows
  ``evaluate`` reports ``val_loss`` on), in batches of ``opts.eval_batch_size`` placed on the
  mesh; None when early stopping is off or step t holds no validation row."""
  if not opts.early_stop_every or not stream.has_validation:
    return None
  vi = stream.val_index(t)
  if len(vi) == 0:
    return None
  vy = stream.dataset.train.y[vi].astype(np.int64)
  batches = list(streams_lib.iterate_test(stream.dataset.train, opts.eval_batch_size, vi))

  def score(logits_of):
    return early_stop_lib.held_out_score(_logits(logits_of, batches, mesh), vy,
                                         opts.early_stop_metric)

  return early_stop_lib.EarlyStopping(score=score, every=opts.early_stop_every,
                                      patience=opts.early_stop_patience)


GRID = 60  # decision-boundary grid: GRID x GRID points of the test inputs' PCA plane
PCA_ROWS = 5000  # test inputs the plane is computed from, at most (a seeded sample)


def predictions(learner: Learner, state, stream: streams_lib.Stream, final: dict,
                batch_size: int, mesh=None) -> dict:
  """What ``cljax.eval.report.diagnostic_plots`` draws of the final model (numpy arrays): ``y``
  [N] and ``scores`` [N, K] (``final``: ``evaluate(..., full=True)``), and the decision
  boundary: ``grid_pred`` [G, G] (the predicted class at mean + u[i]·pc1 + v[j]·pc2 of the
  plane of the first two principal components of the seen classes' test inputs,
  ``metrics.pca_plane``, from at most ``PCA_ROWS`` of them), ``grid_u`` / ``grid_v`` [G] (the
  test inputs' range plus 10 %) and ``test_uv`` [N, 2] (the test inputs' coordinates)."""
  test = stream.dataset.test
  seen_idx = np.flatnonzero(np.isin(test.y, stream.seen_classes(stream.num_steps - 1)))
  # The plane from at most PCA_ROWS test inputs (a large image test set is not loaded at once),
  # every seen test input projected onto it batch by batch.
  rows = seen_idx
  if len(rows) > PCA_ROWS:
    rows = np.sort(np.random.default_rng(stream.seed).choice(rows, PCA_ROWS, replace=False))
  mean, pcs, _ = M.pca_plane(test.batch(rows))
  uv = np.concatenate([(x[:n].reshape(n, -1) - mean) @ pcs.T
                       for x, n in streams_lib.iterate_test(test, batch_size, seen_idx)])
  lo, hi = uv.min(0), uv.max(0)
  pad = 0.1 * np.maximum(hi - lo, 1e-6)
  u = np.linspace(lo[0] - pad[0], hi[0] + pad[0], GRID)
  v = np.linspace(lo[1] - pad[1], hi[1] + pad[1], GRID)
  uu, vv = np.meshgrid(u, v, indexing="ij")  # [G, G]: rows follow u
  points = (mean + uu.reshape(-1, 1) * pcs[0] + vv.reshape(-1, 1) * pcs[1]).astype(np.float32)
  points = points.reshape(-1, *test.example_shape)
  batches = ((b["x"], int(b["valid"].sum()))
             for b in streams_lib.array_batches(points, np.zeros(len(points), np.int32),
                                                batch_size))
  grid = _predict(learner, state, batches, mesh).argmax(1).reshape(GRID, GRID)
  return {"y": np.asarray(final["y"], np.int64), "scores": np.asarray(final["scores"]),
          "grid_u": u, "grid_v": v, "grid_pred": grid.astype(np.int32), "test_uv": uv}


def predictions_path(workdir: str, run_name: str) -> str:
  return os.path.join(workdir, "predictions", f"{run_name}.npz")


def read_predictions(workdir: str, run_names) -> dict:
  """{run: its ``predictions`` (dict of arrays)} of the runs whose file is in ``workdir``."""
  out = {}
  for name in run_names:
    path = predictions_path(workdir, name)
    if os.path.exists(path):
      with np.load(path) as f:
        out[name] = {k: f[k] for k in f.files}
  return out


def state_bytes(state) -> int:
  """Bytes of every array of a learner state (global shapes; typed keys by their key data)."""
  return int(sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(
      jax.tree.map(lambda a: jax.random.key_data(a) if sharding_lib.is_key(a) else a, state))))


def update_latency(learner: Learner, state, batch: dict, key: jax.Array, calls: int,
                   mesh=None) -> Optional[dict]:
  """{"median", "p99", "n"}: milliseconds of one ``update`` of a batch-1 ``batch`` (each call
  waited for), over ``calls`` calls after one untimed call (its compile), chained from a copy of
  ``state`` whose results are dropped: the run's own state and keys are untouched. None for
  ``calls`` = 0."""
  if calls <= 0:
    return None
  if mesh is not None and mesh.devices.size > 1:
    batch = mesh_lib.shard_batch(mesh, batch)
  s = jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a, state)
  times = []
  for i in range(calls + 1):
    t0 = time.perf_counter()
    s, info = learner.update(s, batch, jax.random.fold_in(key, i))
    jax.block_until_ready((s, info))
    times.append(time.perf_counter() - t0)
  ms = 1e3 * np.asarray(times[1:])
  return {"median": float(np.median(ms)), "p99": float(np.percentile(ms, 99)), "n": calls}


def _check_chunk(chunk: dict, example_shape: tuple, num_classes: int, where: str,
                 rows: Optional[slice] = None) -> None:
  """The contract's boundary checks (``cljax.learner.check_batch``) on a whole chunk at once
  (``rows``: the rows of each batch whose inputs this process loaded)."""
  cols = slice(None) if rows is None else rows
  y, valid, labeled = chunk["y"][:, cols], chunk["valid"][:, cols], chunk["labeled"][:, cols]
  n, b = y.shape
  flat = {"x": chunk["x"].reshape(n * b, *chunk["x"].shape[2:]), "y": y.reshape(-1),
          "valid": valid.reshape(-1), "labeled": labeled.reshape(-1)}
  try:
    contract.check_batch(flat, num_classes, (example_shape, np.float32), where)
  except contract.BatchError as e:
    raise DataError(str(e)) from None


def _agree_chunk(chunk_error: Optional[DataError], where: str) -> None:
  """In a multi-process run, every process learns at each chunk whether any process found bad
  input in it or was asked to stop, so all of them stop at the same point (a collective: a
  process that went on alone would wait forever for the others)."""
  stop = _STOP[0] or 0
  code = distributed.agree((1 << 8) * (chunk_error is not None) + stop)
  if chunk_error is not None:
    raise chunk_error
  if code >> 8:
    raise RunError(f"another process found bad input at {where} (it printed the error; with "
                   "--config.num_processes each process's output is in WORKDIR/process_<i>.log)")
  if code & 0xFF:
    request_stop(code & 0xFF)
    raise Interrupted(code & 0xFF)


def _batches_of(mesh, chunk: dict, rows: Optional[slice] = None) -> list:
  """The chunk's batches in order: numpy views on one device (jit transfers them with the call,
  the cheapest way in), sharded over the ``data`` axis on several (``rows``: this process loaded
  only these rows of each batch's inputs)."""
  x, y, valid, labeled = chunk["x"], chunk["y"], chunk["valid"], chunk["labeled"]
  out = [{"x": x[i], "y": y[i], "valid": valid[i], "labeled": labeled[i]}
         for i in range(y.shape[0])]
  if mesh.devices.size == 1:
    return out
  local = ("x",) if rows is not None else ()
  return [mesh_lib.shard_batch(mesh, b, local) for b in out]


def run_learner(run_name: str, learner: Learner, stream: streams_lib.Stream, opts: RunOptions,
                workdir: str, resume: bool = False,
                log: Callable[[str], None] = print, logger=None,
                rescaled: Optional[Callable[[float], Optional[Learner]]] = None) -> dict:
  """Runs one learner over the whole stream; returns its result record (``cljax.eval.results``).

  ``learner``: its bare functions (``get(..., checked=False)``); the runner checks every chunk
  of batches itself. Checkpoints go to ``workdir/checkpoints/<run_name>/<step>``. With
  ``resume`` the newest readable checkpoint is restored and the run continues from the next step;
  without it, a folder that already holds checkpoints is an error (nothing written is overwritten).

  ``logger``: a ``cljax.eval.loggers.Logger`` (or None) given, at each step end once its
  checkpoint is handed over, the step's evaluation points (``log_eval``) and its metrics
  (``log_step``: accuracy A(t), accuracy_seen, loss, budget_used, examples_per_s), the values
  of the result record. A step redone after a resume is logged again.

  Divergence (``divergence``, checked at every step end before the step is saved): with
  ``opts.on_divergence == "stop"`` the run raises ``Diverged`` (the steps saved before are kept);
  with ``"rollback"`` the newest saved step (or the stream's start) is restored and the run goes
  on with ``rescaled(scale)``: the same learner with its learning rates times ``scale`` (halved
  at each rollback; None: it has none, and the run stops). ``rollbacks`` in the result record
  and the checkpoints' metadata; a resumed run goes on with the rates it had.

  After the last step: ``state_bytes`` and ``latency_ms`` (``update_latency``, on a copy of the
  final state) join the record, and the final model's ``predictions`` are saved to
  ``workdir/predictions/<run_name>.npz`` (``read_predictions``).

  The run happens under ``jax.set_mesh(mesh)``, so learners that sample their training batches
  inside jit can split them over the devices (``cljax.ops.sharding.data_rows``): ``opts.mesh``,
  or one built from ``opts.num_devices``.
  """
  mesh = opts.mesh if opts.mesh is not None else mesh_lib.data_mesh(opts.num_devices)
  with jax.set_mesh(mesh):
    return _run_on_mesh(mesh, run_name, learner, stream, opts, workdir, resume, log, logger,
                        rescaled)


def _run_on_mesh(mesh, run_name, learner, stream, opts, workdir, resume, log, logger,
                 rescaled) -> dict:
  ckdir = os.path.join(workdir, "checkpoints", run_name)
  check_stop()
  ck = Checkpointer(ckdir, max_to_keep=opts.max_to_keep)
  try:
    with ck:
      return _stream_run(mesh, run_name, learner, stream, opts, resume, log, ck, logger,
                         rescaled, predictions_path(workdir, run_name))
  except BaseException as e:  # pylint: disable=broad-except
    if _STOP[0] is None:
      raise
    ck.close()  # the checkpoint in flight finishes (a repeated signal is ignored meanwhile)
    stop = e if isinstance(e, Interrupted) else Interrupted(_STOP[0])
    stop.run_name, stop.saved_step, stop.num_steps, stop.directory = (
        run_name, ck.saved_step, stream.num_steps, ckdir)
    if stop is e:
      raise
    raise stop from e


def _position(meta: Optional[dict], every: int) -> tuple:
  """(steps, acc_rows, eval_points, examples_seen, next_eval, wall_s before) after the saved step
  whose metadata is ``meta``, or at the stream's start (None)."""
  if meta is None:
    return [], [], [], 0, every or None, 0.0
  return (meta["steps"], meta["acc_rows"], meta["eval_points"], meta["examples_seen"],
          meta["next_eval"], meta["wall_s"])


def _diverged_message(run_name: str, t: int, num_steps: int, reason: str, learner: Learner,
                      saved: Optional[int], rollbacks: list, directory: str,
                      max_rollbacks: int, factor: float = 0.5) -> str:
  kept = (f"steps up to {saved + 1} are saved in {directory}" if saved is not None
          else "no step of it was saved")
  lr = learner.hparams.get("lr")
  rate = f"--config.hparams.{run_name}.lr" + (f", now {lr:g}" if isinstance(lr, float) else "")
  if rollbacks:
    return (f"run {run_name!r} diverged at step {t + 1} of {num_steps}: {reason}, after "
            f"{len(rollbacks)} rollbacks (learning rates x{rollbacks[-1]['lr_scale']:g}); {kept}; "
            f"lower its learning rate ({rate}), allow more rollbacks "
            f"(--config.max_rollbacks, now {max_rollbacks}) or cut deeper ones "
            f"(--config.rollback_factor, now {factor:g}) and rerun with --resume")
  return (f"run {run_name!r} diverged at step {t + 1} of {num_steps}: {reason}; {kept}; lower "
          f"its learning rate ({rate}) or rerun with --config.on_divergence=rollback --resume "
          f"(restores the last good step and multiplies the learning rate by "
          f"--config.rollback_factor={factor:g}, at most --config.max_rollbacks={max_rollbacks} "
          "times)")


def _stream_run(mesh, run_name, learner, stream, opts, resume, log, ck, logger, rescaled,
                preds_path) -> dict:
  fingerprint = run_fingerprint(run_name, stream, opts)
  multi = distributed.count() > 1
  rows = distributed.local_rows(mesh, opts.batch_size)  # None: this process loads whole batches
  it = streams_lib.chunks(stream, opts.batch_size, max_batches=_CHUNK, rows=rows)
  stream_start = it.get_state()
  key = _key_for(opts.seed, run_name)
  k_batch, k_step = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
  example_shape = stream.dataset.train.example_shape
  num_classes = stream.dataset.num_classes
  first = stream.steps[0][:opts.batch_size]
  first_batch = {"x": stream.dataset.train.batch(first),
                 "y": np.asarray(stream.labels[0][:opts.batch_size], np.int32)}
  state = learner.init(jax.random.fold_in(key, 0), first_batch)

  every = opts.eval_every_examples
  steps, acc_rows, eval_points, examples_seen, next_eval, wall_before = _position(None, every)
  rollbacks, lr_scale, start = [], 1.0, None  # start: the last good step's start loss
  if ck.steps() and not resume:
    raise RunError(f"{ck.directory} already holds checkpoints (steps {ck.steps()}); pass "
                   "--resume to continue that run, or use a new --workdir")
  restored = None
  if resume:
    # The primary restores first: it alone moves unreadable steps aside, then the others read.
    if not distributed.primary():
      distributed.sync(f"{run_name}: restored")
    restored = ck.restore_latest(state)
    if distributed.primary():
      distributed.sync(f"{run_name}: restored")
    distributed.same_everywhere(-1 if restored is None else restored[0],
                                f"the step of {run_name} to resume from")
  else:
    distributed.sync(f"{run_name}: checkpoints checked")  # before the primary writes any
  if restored is not None:
    step, state, meta = restored
    differ = fingerprint_diff(meta.get("fingerprint", {}), fingerprint)
    if differ:
      raise RunError(f"the checkpoints in {ck.directory} belong to a run with another "
                     f"configuration: {', '.join(differ)}; resume with the saved values or use "
                     "a new --workdir")
    steps, acc_rows, eval_points, examples_seen, next_eval, wall_before = _position(meta, every)
    it.set_state(meta["iterator"])
    ck.saved_step = step
    log(f"[{run_name}] resumed after step {step} ({examples_seen} examples seen)")
    if step + 1 >= stream.num_steps:
      return meta["result"]
    rollbacks, start = list(meta.get("rollbacks", [])), meta.get("start_loss")
    if rollbacks:  # go on with the learning rates the run had when it was saved
      lr_scale = rollbacks[-1]["lr_scale"]
      if rescaled is None:
        raise RunError(f"the checkpoints in {ck.directory} were saved after {len(rollbacks)} "
                       "rollbacks (learning rates rescaled): resume them through "
                       "experiments/run.py, which rebuilds the learner")
      learner = rescaled(lr_scale)
  state = mesh_lib.place_state(mesh, state)
  meta = None
  logged = len(eval_points)  # eval points handed to the logger
  t0 = time.perf_counter()
  step_t0, step_sums, step_examples = time.perf_counter(), [], 0  # one per group of calls
  total = stream.num_examples
  while True:
    chunk = next(it, None)
    if chunk is None:
      break
    t = int(chunk["step"])
    b0 = int(chunk["first_batch"])
    where = f"step {t} batches {b0}+"
    if multi:
      try:
        _check_chunk(chunk, example_shape, num_classes, where, rows)
        chunk_error = None
      except DataError as e:
        chunk_error = e
      _agree_chunk(chunk_error, where)
    else:
      _check_chunk(chunk, example_shape, num_classes, where)
    n = chunk["y"].shape[0]
    counts = chunk["valid"].sum(1).tolist()
    chunk_infos = []
    update = learner.update
    keys = _chunk_keys(k_batch, b0, n)
    if next_eval is None:  # the hot path: nothing but the calls
      for batch, k in zip(_batches_of(mesh, chunk, rows), keys):
        state, info = update(state, batch, k)
        chunk_infos.append(info)
      examples_seen += sum(counts)
      step_examples += sum(counts)
    else:
      for i, batch in enumerate(_batches_of(mesh, chunk, rows)):
        state, info = update(state, batch, keys[i])
        chunk_infos.append(info)
        examples_seen += counts[i]
        step_examples += counts[i]
        last = bool(chunk["ends_step"]) and i == n - 1
        if examples_seen >= next_eval and not last:
          ev = evaluate(learner, state, stream, t, opts.eval_batch_size, mesh)
          eval_points.append({"step": t, "examples_seen": examples_seen, "step_end": False,
                              **_point(ev)})
          while next_eval <= examples_seen:
            next_eval += every
    step_sums.extend(_chunk_sums(chunk_infos))
    if _STOP[0] is not None and not multi:  # several processes stop together (_agree_chunk)
      raise Interrupted(_STOP[0])
    if not chunk["ends_step"]:
      continue
    used, loss_sum, loss_n, extra_sums, watch = _step_totals(step_sums)
    remaining = None if opts.budget is None else max(opts.budget - int(round(used)), 0)
    # Long training inside end_of_step (offline retraining, large budgets) logs rate and ETA.
    stopping = early_stopping(stream, t, opts, mesh) if learner.early_stopping else None
    state, info = learner.end_of_step(
        state, jax.random.fold_in(k_step, t), remaining,
        progress=progress_lib.Reporter(log, f"[{run_name}] step {t} end_of_step"),
        **({} if stopping is None else {"early_stop": stopping}))
    end_loss = float(info.loss)
    is_final = t == stream.num_steps - 1
    ev = evaluate(learner, state, stream, t, opts.eval_batch_size, mesh, full=is_final)
    diverged = divergence(watch, end_loss, bool(_all_finite(state)), num_classes, start)
    if diverged is not None:
      reason, loss = diverged
      new = None
      if opts.on_divergence == "rollback" and len(rollbacks) < opts.max_rollbacks:
        factor = opts.rollback_factor
        new = rescaled(lr_scale * factor) if rescaled is not None else None
        if new is None:
          reason += " (it has no learning rate to lower: rollback cannot help)"
      if new is None:
        ck.wait()
        raise Diverged(_diverged_message(run_name, t, stream.num_steps, reason, learner,
                                         ck.saved_step, rollbacks, ck.directory,
                                         opts.max_rollbacks, opts.rollback_factor))
      learner, lr_scale = new, lr_scale * factor
      rollbacks.append({"step": t, "loss": loss, "reason": reason, "lr_scale": lr_scale})
      ck.wait()
      state = learner.init(jax.random.fold_in(key, 0), first_batch)  # the stream's start
      restored = ck.restore_latest(state) if ck.saved_step is not None else None
      back = _position(restored[2] if restored else None, every)
      steps, acc_rows, eval_points, examples_seen, next_eval, _ = back
      start = restored[2].get("start_loss") if restored else None
      it.set_state(restored[2]["iterator"] if restored else stream_start)
      state = mesh_lib.place_state(mesh, restored[1] if restored else state)
      logged = len(eval_points)
      log(f"[{run_name}] step {t + 1}: {reason}; rolled back to "
          f"{f'step {restored[0] + 1}' if restored else 'the start'} with its learning rates "
          f"x{lr_scale:g} (rollback {len(rollbacks)} of at most {opts.max_rollbacks})")
      step_t0, step_sums, step_examples = time.perf_counter(), [], 0
      continue
    start = watch.first if watch.first is not None else start
    step_budget = used + float(info.passes)
    if np.isfinite(end_loss):
      loss_sum, loss_n = loss_sum + end_loss, loss_n + 1
    if (opts.budget is not None and step_budget > opts.budget + 1e-6 and learner.budgeted):
      log(f"[{run_name}] warning: step {t} spent {step_budget:g} passes, over the budget "
          f"{opts.budget}")
    acc_rows.append(ev["row"])
    eval_points.append({"step": t, "examples_seen": examples_seen, "step_end": True,
                        **_point(ev)})
    if next_eval is not None:
      while next_eval <= examples_seen:
        next_eval += every
    now = time.perf_counter()
    wall = now - step_t0
    steps.append({"step": t, "accuracy": ev["A"], "accuracy_seen": ev["accuracy"],
                  "examples_seen": examples_seen, "wall_s": wall,
                  "examples_per_s": step_examples / wall if wall > 0 else None,
                  "budget_used": step_budget,
                  "loss": float(loss_sum / loss_n) if loss_n else None,
                  **{k: ev[k] for k in _EVAL_FIGURES if k in ev},
                  "extra": _step_extras(extra_sums, info)})
    elapsed = wall_before + now - t0
    meta = {"run_name": run_name, "fingerprint": fingerprint, "steps": steps,
            "acc_rows": acc_rows, "eval_points": eval_points, "examples_seen": examples_seen,
            "next_eval": next_eval, "wall_s": elapsed, "iterator": it.get_state(),
            "rollbacks": rollbacks, "start_loss": start}
    if is_final:
      one = {"x": stream.dataset.train.batch(stream.steps[-1][:1]),
             "y": np.asarray(stream.labels[-1][:1], np.int32), "valid": np.ones(1, bool),
             "labeled": np.ones(1, bool)}
      latency = update_latency(learner, state, one, jax.random.fold_in(key, 3),
                               opts.latency_calls, mesh)
      meta["result"] = results_lib.record(acc_rows, stream.task_step, steps, eval_points, ev,
                                          elapsed, state_bytes=state_bytes(state),
                                          latency_ms=latency, rollbacks=rollbacks)
      preds = predictions(learner, state, stream, ev, opts.eval_batch_size, mesh)
      if distributed.primary():
        os.makedirs(os.path.dirname(preds_path), exist_ok=True)
        np.savez(preds_path, **preds)
    ck.save(t, state, meta)  # the step is printed as done once its save is handed over
    if logger is not None:
      for p in eval_points[logged:]:
        logger.log_eval(run_name, p["step"], p["examples_seen"], p["accuracy"],
                        {k: p[k] for k in _EVAL_FIGURES if k in p})
      logged = len(eval_points)
      logger.log_step(run_name, t, examples_seen, loggers_lib.step_metrics(steps[-1]))
    done_frac = examples_seen / total
    eta = elapsed / done_frac * (1 - done_frac) if done_frac > 0 else float("nan")
    log(f"[{run_name}] step {t + 1}/{stream.num_steps} | {examples_seen}/{total} ex | "
        f"A(t)={ev['A']:.4f} | {step_examples / wall:,.0f} ex/s | budget {step_budget:g} | "
        f"ETA {eta:.0f}s")
    step_t0, step_sums, step_examples = time.perf_counter(), [], 0
  ck.wait()
  if meta is None or len(acc_rows) != stream.num_steps:
    raise RunError(f"[{run_name}] the stream ended after {len(acc_rows)} of "
                   f"{stream.num_steps} steps")
  return meta["result"]


# The figures of an evaluation (``evaluate``) recorded in each step and evaluation point beside
# accuracy: losses on test and validation data, validation accuracy (when measured).
_EVAL_FIGURES = ("test_loss", "val_loss", "val_accuracy")


def _point(ev: dict) -> dict:
  """An evaluation point's figures: accuracy and top-5 on the seen classes' test examples, and
  the losses (``_EVAL_FIGURES``) measured."""
  return {"accuracy": ev["accuracy"], "top5": ev["top5"],
          **{k: ev[k] for k in _EVAL_FIGURES if k in ev}}
