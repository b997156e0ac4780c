"""Streams: a data set's training examples laid out in time steps, deterministic from a seed.

Orderings (Stream-51 / CORe50 protocol, plus the class- and data-incremental settings):

* ``iid``: one global shuffle, cut into ``num_steps`` equal steps; one evaluation task.
* ``class_iid``: classes in a random order, each class contiguous with its examples shuffled;
  steps of ``classes_per_step`` classes; a task per step.
* ``class_incremental``: tasks of ``classes_per_step`` new classes, examples shuffled within the
  task (classes of a task interleaved); a task per step.
* ``instance``: clips (``instance`` ids) shuffled, frames of a clip kept in temporal order; cut into
  ``num_steps`` steps; one task.
* ``class_instance``: classes shuffled, clips shuffled within a class, frames in order; steps of
  ``classes_per_step`` classes; a task per step.
* ``time``: ascending timestamps (data-incremental), cut into ``num_steps`` steps; one task.

``label_rate`` keeps labels on that fraction of each step (at least one example per step when the
rate is positive); the rest are streamed with ``labeled=False``.

Validation (``val_fraction`` or ``val_folds``/``val_fold``): part of each step's training
examples is held out before the stream is laid out in batches, the same rows for every learner
and decided by the seed alone (a generator of its own, so a stream without validation is the one
it always was): ``val_fraction`` holds out round(fraction * n_c) random examples of each class c
of each step (stratified); ``val_folds`` = k splits every class's training rows into k folds
(stratified k-fold, ``experiments/studies/kfold.py``) and holds out fold ``val_fold``. The held-out
rows of step t are ``val_steps[t]``; after step t the validation set is those of steps 0..t
(``val_index(t)``), labelled with their true labels.

Evaluation tasks: task j holds the classes first introduced at step j (or all classes when the
ordering is not class-grouped); its test set is the test examples of those classes, which gives
the accuracy matrix a[t, j].

Iteration is a grain pipeline over fixed-size batches (the last batch of a step padded and
marked by ``valid``), whose iterator state is saved in every checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import grain
import numpy as np

from cljax.data.sources import ArraySource, DataError, Dataset

ORDERINGS = ("iid", "class_iid", "class_incremental", "instance", "class_instance", "time")
_CLASS_GROUPED = ("class_iid", "class_incremental", "class_instance")


@dataclasses.dataclass(eq=False)
class Stream:
  """A laid-out stream. ``steps[t]`` [n_t] indexes ``dataset.train``; ``labeled[t]`` [n_t] bool.

  ``tasks[j]`` are the classes of evaluation task j, ``task_step[j]`` the step that introduces it,
  ``test_index[j]`` the indices of its test examples in ``dataset.test``.
  """

  dataset: Dataset
  ordering: str
  seed: int
  steps: list
  labeled: list
  tasks: list
  task_step: list
  test_index: list
  labels: list = None  # [n_t] int32 per step: the label streamed with each example
  val_steps: list = None  # [v_t] int64 per step: its held-out validation rows (None: none)

  def __post_init__(self):
    if self.labels is None:
      self.labels = [self.dataset.train.y[s].astype(np.int32) for s in self.steps]

  @property
  def has_validation(self) -> bool:
    return self.val_steps is not None and sum(len(v) for v in self.val_steps) > 0

  def val_index(self, t: int) -> np.ndarray:
    """[V] indices into ``dataset.train`` of the validation rows of steps 0..t (empty without a
    validation split)."""
    if self.val_steps is None:
      return np.zeros(0, np.int64)
    return np.concatenate([np.zeros(0, np.int64)] + list(self.val_steps[:t + 1]))

  @property
  def num_steps(self) -> int:
    return len(self.steps)

  @property
  def num_examples(self) -> int:
    return int(sum(len(s) for s in self.steps))

  @property
  def max_step_size(self) -> int:
    return int(max(len(s) for s in self.steps))

  def tasks_seen(self, t: int) -> int:
    """Number of tasks introduced at or before step t."""
    return int(sum(1 for s in self.task_step if s <= t))

  def seen_classes(self, t: int) -> np.ndarray:
    return np.unique(np.concatenate([self.tasks[j] for j in range(self.tasks_seen(t))]))

  def describe(self) -> str:
    sizes = [len(s) for s in self.steps]
    lab = sum(int(l.sum()) for l in self.labeled)
    val = (f", {sum(len(v) for v in self.val_steps)} held out for validation"
           if self.has_validation else "")
    return (f"{self.dataset.name} {self.ordering}: {self.num_steps} steps "
            f"({min(sizes)}-{max(sizes)} examples each, {self.num_examples} total, "
            f"{lab} labelled{val}), {len(self.tasks)} eval tasks")


def _chunks(order: np.ndarray, num_steps: int) -> list:
  if num_steps < 1 or num_steps > len(order):
    raise DataError(f"num_steps must be in [1, {len(order)}], got {num_steps}")
  return [np.asarray(c, np.int64) for c in np.array_split(order, num_steps)]


def _class_groups(classes: np.ndarray, k: int) -> list:
  if k < 1:
    raise DataError(f"classes_per_step must be >= 1, got {k}")
  return [classes[i:i + k] for i in range(0, len(classes), k)]


def _clips_in_order(src: ArraySource, idx: np.ndarray, rng) -> np.ndarray:
  """idx grouped by clip, clips shuffled, frames in temporal order within a clip."""
  frame = src.frame if src.frame is not None else np.arange(len(src))
  clips = np.unique(src.instance[idx])
  rng.shuffle(clips)
  out = []
  for c in clips:
    members = idx[src.instance[idx] == c]
    out.append(members[np.argsort(frame[members], kind="stable")])
  return np.concatenate(out)


def make_stream(dataset: Dataset, ordering: str = "class_incremental", *,
                classes_per_step: int = 2, num_steps: int = 5, label_rate: float = 1.0,
                seed: int = 0, class_order: Optional[list] = None,
                max_examples_per_step: Optional[int] = None, first_step_classes: int = 0,
                label_noise: float = 0.0, val_fraction: float = 0.0, val_folds: int = 0,
                val_fold: int = 0) -> Stream:
  """Lays out ``dataset.train`` as a stream (see module docstring).

  Args:
    ordering: one of ORDERINGS.
    classes_per_step: classes per step for the class-grouped orderings.
    num_steps: steps for ``iid``, ``instance`` and ``time``.
    label_rate: fraction in (0, 1] of each step's examples that keep their label.
    seed: the stream's seed (orderings, class order, which labels are kept).
    class_order: a fixed class order instead of a random one (class-grouped orderings).
    max_examples_per_step: keep only the first n examples of each step (quick runs).
    first_step_classes: class-grouped orderings: step 0 holds this many classes (a base
      initialisation set, as in REMIND / Deep SLDA), later steps ``classes_per_step``.
    label_noise: fraction of each step's examples whose input is replaced by a random example
      of another class while the label is kept (Käding et al.'s noise study).
    val_fraction: fraction in [0, 1) of each class of each step held out for validation
      (stratified; module docstring).
    val_folds / val_fold: instead of ``val_fraction``, hold out fold ``val_fold`` of a stratified
      ``val_folds``-fold split of the training rows (0: none).
  """
  if ordering not in ORDERINGS:
    raise DataError(f"unknown ordering {ordering!r}; valid: {list(ORDERINGS)}")
  if not 0.0 < label_rate <= 1.0:
    raise DataError(f"label_rate must be in (0, 1], got {label_rate}")
  src = dataset.train
  rng = np.random.default_rng(seed)
  n = len(src)
  present = np.unique(src.y)
  if class_order is not None:
    classes = np.asarray(class_order, np.int64)
    missing = sorted(set(present.tolist()) - set(classes.tolist()))
    if missing or len(set(classes.tolist())) != len(classes):
      raise DataError(f"class_order must list each training class once; missing {missing}")
  else:
    classes = rng.permutation(present)

  if ordering in ("instance", "class_instance") and src.instance is None:
    raise DataError(f"ordering {ordering!r} needs instance (clip/session) ids, which "
                    f"{dataset.name} does not have; use 'iid', 'class_iid' or "
                    "'class_incremental', or load data with an 'instance' array (npz)")
  if ordering == "time" and src.time is None:
    raise DataError(f"ordering 'time' needs timestamps, which {dataset.name} does not have "
                    "(npz sources can carry a 'time' array)")

  if not 0.0 <= label_noise < 1.0:
    raise DataError(f"label_noise must be in [0, 1), got {label_noise}")
  if ordering in _CLASS_GROUPED:
    if first_step_classes:
      if not 0 < first_step_classes < len(classes):
        raise DataError(f"first_step_classes must be in [1, {len(classes) - 1}], "
                        f"got {first_step_classes}")
      groups = [classes[:first_step_classes]] + _class_groups(classes[first_step_classes:],
                                                              classes_per_step)
    else:
      groups = _class_groups(classes, classes_per_step)
    steps = []
    for g in groups:
      if ordering == "class_incremental":
        idx = np.flatnonzero(np.isin(src.y, g))
        steps.append(rng.permutation(idx))
      elif ordering == "class_iid":
        steps.append(np.concatenate([rng.permutation(np.flatnonzero(src.y == c)) for c in g]))
      else:
        steps.append(np.concatenate([_clips_in_order(src, np.flatnonzero(src.y == c), rng)
                                     for c in g]))
    tasks = [np.sort(np.asarray(g, np.int64)) for g in groups]
    task_step = list(range(len(groups)))
  else:
    if ordering == "iid":
      order = rng.permutation(n)
    elif ordering == "instance":
      order = _clips_in_order(src, np.arange(n), rng)
    else:
      order = np.argsort(src.time, kind="stable")
    steps = _chunks(order, num_steps)
    tasks = [np.sort(present)]
    task_step = [0]

  if max_examples_per_step:
    steps = [s[:max_examples_per_step] for s in steps]
  val_steps = None
  if val_fraction or val_folds:
    steps, val_steps = split_validation(src.y, steps, seed, val_fraction, val_folds, val_fold)
  labeled = []
  for s in steps:
    m = np.zeros(len(s), bool)
    k = len(s) if label_rate >= 1.0 else max(1, int(round(label_rate * len(s))))
    m[rng.choice(len(s), k, replace=False)] = True
    labeled.append(m)
  labels = [src.y[s].astype(np.int32) for s in steps]
  if label_noise > 0:
    steps = [_add_label_noise(src, s, label_noise, rng) for s in steps]
  test_index = [np.flatnonzero(np.isin(dataset.test.y, t)) for t in tasks]
  for j, ti in enumerate(test_index):
    if len(ti) == 0:
      raise DataError(f"evaluation task {j} (classes {tasks[j].tolist()}) has no test examples")
  return Stream(dataset, ordering, seed, steps, labeled, tasks, task_step, test_index, labels,
                val_steps)


def split_validation(y: np.ndarray, steps: list, seed: int, fraction: float = 0.0,
                     folds: int = 0, fold: int = 0) -> tuple:
  """(training rows, validation rows) of each step (lists of [n_t] int64, order kept).

  ``y`` [N]: the labels of the rows ``steps`` index. ``fraction``: round(fraction * n_c) random
  rows of each class c of each step; ``folds`` = k > 0: every class's rows (over the whole of
  ``y``) dealt into k folds in a random order, fold ``fold`` held out. Draws come from a
  generator of their own seeded by ``seed``. DataError for bad values or a step left empty.
  """
  if folds:
    if not (isinstance(folds, int) and folds >= 2 and 0 <= fold < folds):
      raise DataError(f"val_folds must be an integer >= 2 and val_fold in [0, val_folds), got "
                      f"val_folds={folds!r}, val_fold={fold!r}")
    if fraction:
      raise DataError("give val_fraction or val_folds, not both")
  elif not 0.0 <= fraction < 1.0:
    raise DataError(f"val_fraction must be in [0, 1), got {fraction}")
  rng = np.random.default_rng([seed, 0x7A1])  # not the stream's generator: its draws unchanged
  held = np.zeros(len(y), bool)
  if folds:
    for c in np.unique(y):
      rows = rng.permutation(np.flatnonzero(y == c))
      held[rows[fold::folds]] = True  # row i of the class in fold i mod k
  else:
    for s in steps:
      for c in np.unique(y[s]):
        rows = s[y[s] == c]
        held[rng.choice(rows, int(round(fraction * len(rows))), replace=False)] = True
  train, val = [], []
  for t, s in enumerate(steps):
    h = held[s]
    if h.all():
      raise DataError(f"the validation split leaves step {t} without training examples; lower "
                      "val_fraction (or use more val_folds)")
    train.append(np.asarray(s[~h], np.int64))
    val.append(np.asarray(s[h], np.int64))
  return train, val


def _add_label_noise(src: ArraySource, idx: np.ndarray, rate: float, rng) -> np.ndarray:
  """Replaces round(rate * n) inputs of a step by random examples of other classes.

  Returns the new input indices; the caller keeps the original labels, so exactly that fraction
  of the step is mislabelled.
  """
  idx = idx.copy()
  k = int(round(rate * len(idx)))
  for pos in rng.choice(len(idx), k, replace=False):
    others = np.flatnonzero(src.y != src.y[idx[pos]])
    idx[pos] = rng.choice(others)
  return idx


@dataclasses.dataclass(frozen=True)
class _ChunkSpec:
  """Consecutive fixed-size batches of one step, loaded together (one gather, one check, one
  transfer). Arrays are [n, B]; a step's last batch is padded (index 0, ``valid`` False)."""

  step: int
  first_batch: int     # number of the chunk's first batch in the whole stream
  index: np.ndarray    # [n, B] int64 into dataset.train
  label: np.ndarray    # [n, B] int32 streamed labels
  valid: np.ndarray    # [n, B] bool
  labeled: np.ndarray  # [n, B] bool
  ends_step: bool      # its last batch is the step's last


def chunk_specs(stream: Stream, batch_size: int, max_bytes: int = 16 << 20,
                max_batches: int = 256) -> list:
  """The stream's fixed-size batches grouped into chunks of at most ``max_batches`` batches and
  about ``max_bytes`` of inputs; a chunk never spans two steps. Built per step with array ops
  (a stream streamed one example at a time has as many batches as examples)."""
  if batch_size < 1:
    raise DataError(f"batch_size must be >= 1, got {batch_size}")
  row_bytes = 4 * int(np.prod(stream.dataset.train.example_shape))
  per = int(max(1, min(max_batches, max_bytes // max(1, row_bytes * batch_size))))
  chunks, first = [], 0
  for t, (idx, lab, ys) in enumerate(zip(stream.steps, stream.labeled, stream.labels)):
    m = len(idx)
    if m == 0:
      raise DataError(f"step {t} of the stream is empty")
    nb = -(-m // batch_size)
    pad = nb * batch_size - m

    def grid(a, fill, dtype):
      return np.concatenate([np.asarray(a, dtype), np.full(pad, fill, dtype)]).reshape(
          nb, batch_size)

    index, label = grid(idx, 0, np.int64), grid(ys, 0, np.int32)
    valid, labeled = grid(np.ones(m, bool), False, bool), grid(lab, False, bool)
    for s in range(0, nb, per):
      e = min(s + per, nb)
      chunks.append(_ChunkSpec(t, first + s, index[s:e], label[s:e], valid[s:e],
                               labeled[s:e], e == nb))
    first += nb
  return chunks


class _Loader(grain.transforms.Map):
  """Turns a chunk spec into stacked numpy arrays: x [n, B, ...], y / valid / labeled [n, B].

  ``rows``: load only these rows of each batch's inputs (x [n, rows, ...]; the labels and masks
  stay whole): a process of a multi-process run reads only its part of each global batch.
  """

  def __init__(self, src: ArraySource, rows: Optional[slice] = None):
    self._src = src
    self._rows = rows

  def map(self, spec: _ChunkSpec) -> dict:
    index = spec.index if self._rows is None else spec.index[:, self._rows]
    n, b = index.shape
    x = self._src.batch(index.reshape(-1))
    return {"x": x.reshape(n, b, *x.shape[1:]), "y": spec.label, "valid": spec.valid,
            "labeled": spec.labeled & spec.valid, "step": np.int32(spec.step),
            "first_batch": np.int64(spec.first_batch), "ends_step": np.bool_(spec.ends_step)}

  def __repr__(self):
    return f"_Loader({self._src!r})"


def chunks(stream: Stream, batch_size: int, prefetch: int = 2, rows: Optional[slice] = None,
           **kw) -> grain.DatasetIterator:
  """A checkpointable grain iterator (``get_state``/``set_state``) over the stream's chunks of
  batches (``chunk_specs``); each element is a dict of stacked arrays (``_Loader``; ``rows``: the
  rows of each batch whose inputs are loaded, all by default).

  One background thread loads up to ``prefetch`` chunks ahead (0: load on demand), so gathering
  the next chunk overlaps the learner's work on this one. Not grain's default (16 threads, 500
  elements ahead): with chunks of up to 16 MB that would hold gigabytes of a long stream.
  """
  ds = grain.MapDataset.source(chunk_specs(stream, batch_size, **kw)).map(
      _Loader(stream.dataset.train, rows))
  opts = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(opts))


def batches(stream: Stream, batch_size: int) -> Iterator[dict]:
  """The stream's batches one at a time: dicts with ``x`` [B, ...], ``y``, ``valid``,
  ``labeled`` [B], ``step`` and ``last_in_step`` (the runner reads whole chunks instead)."""
  for c in chunks(stream, batch_size):
    n = c["y"].shape[0]
    for i in range(n):
      yield {"x": c["x"][i], "y": c["y"][i], "valid": c["valid"][i],
             "labeled": c["labeled"][i], "step": c["step"],
             "last_in_step": np.bool_(bool(c["ends_step"]) and i == n - 1)}


def num_batches(stream: Stream, batch_size: int) -> int:
  return int(sum(-(-len(s) // batch_size) for s in stream.steps))


def array_batches(x: np.ndarray, y: np.ndarray, batch_size: int,
                  labeled: Optional[np.ndarray] = None) -> Iterator[dict]:
  """Fixed-size batches of arrays x [N, ...], y [N] in order, the last one padded and marked by
  ``valid`` (so a jitted learner sees one shape): dicts with ``x``, ``y``, ``valid``, ``labeled``.
  For driving a learner from a plain Python loop."""
  x, y = np.asarray(x), np.asarray(y)
  labeled = np.ones(len(y), bool) if labeled is None else np.asarray(labeled, bool)
  for s in range(0, len(y), batch_size):
    n = min(batch_size, len(y) - s)
    pad = batch_size - n
    valid = np.r_[np.ones(n, bool), np.zeros(pad, bool)]
    yield {"x": np.concatenate([x[s:s + n], np.zeros((pad,) + x.shape[1:], x.dtype)]),
           "y": np.r_[y[s:s + n], np.zeros(pad, y.dtype)].astype(np.int32),
           "valid": valid, "labeled": np.r_[labeled[s:s + n], np.zeros(pad, bool)] & valid}


def iterate_test(src: ArraySource, batch_size: int, index: Optional[np.ndarray] = None
                 ) -> Iterator[tuple]:
  """(x [B, ...], n_valid) over the whole source (or its rows ``index`` [M], in that order) in
  fixed-size padded batches (the padding repeats row 0)."""
  index = np.arange(len(src)) if index is None else np.asarray(index, np.int64)
  for s in range(0, len(index), batch_size):
    idx = index[s:s + batch_size]
    pad = batch_size - len(idx)
    yield src.batch(np.concatenate([idx, np.zeros(pad, np.int64)])), len(idx)
