"""Loggers of a run: TensorBoard event files (tensorboardX's writer, no TensorFlow) and CSV.

    log = loggers.make("tensorboard,csv", workdir)        # --config.log=tensorboard,csv
    log.log_step("er", step=t, examples_seen=n, metrics={"accuracy": A, "loss": l,
                 "val_loss": v, "test_loss": e, "budget_used": b, "examples_per_s": r})
    log.log_eval("er", step=t, examples_seen=n, accuracy=a)   # anytime evaluation points
    log.close()
    # or, after a run, replay its result record: log.log_result("er", results["runs"]["er"])

What a learner's run is logged as: per time step, ``step/<metric>`` for every metric given
(``accuracy`` = A(t), ``accuracy_seen`` = α(t), ``loss`` (the step's training loss),
``val_loss`` / ``val_accuracy`` on the held-out validation split and ``test_loss`` on the seen
classes' test data when the step record has them, ``budget_used`` in forward-backward passes,
``examples_per_s``), ``extra/<name>`` for each ``Info.extra`` figure of the learner (the step's
mean, ``step_metrics``), and ``anytime/accuracy`` (plus ``anytime/<metric>`` for any of the
step metrics an evaluation point carries) per evaluation point; the x-axis is the number of
stream examples seen. None and NaN values are skipped.

* ``TensorBoardLogger``:
  ``WORKDIR/tensorboard/<run>/events.out.tfevents.<time>.<host>.<pid>.cljax``, one folder per
  learner so TensorBoard overlays them (``tensorboard --logdir WORKDIR/tensorboard``).
  Written by tensorboardX's synchronous ``EventsWriter`` (no TensorFlow or tensorboard needed),
  one ``Event`` of simple-value scalars per call, flushed at once: a live TensorBoard sees it and
  a killed run keeps what it wrote (``SummaryWriter``'s background queue would hold up to
  ``flush_secs`` of events that a kill loses).
* ``CSVLogger``: ``WORKDIR/metrics.csv``, one row per step or evaluation point of any learner:
  ``run, kind, step, examples_seen, <metrics...>, wall_time`` (appended across resumed runs; a
  file written with fewer metric columns is rewritten once with the current header, its rows
  kept; the ``extra/<name>`` figures differ by learner, so they go to TensorBoard only).

``read_events(path)`` decodes an event file (CRCs checked) back into (step, tag, value) rows.
"""

from __future__ import annotations

import csv
import math
import os
import struct
import time
from typing import Mapping, Optional, Protocol

# Metric columns a step row carries, in order (the CSV header); others are logged to TensorBoard
# only. The last three are present when the run measured them (a validation split; test loss).
STEP_METRICS = ("accuracy", "accuracy_seen", "loss", "budget_used", "examples_per_s",
                "val_loss", "val_accuracy", "test_loss")
KINDS = ("tensorboard", "csv")
EXTRA = "extra/"  # prefix of a learner's Info.extra figures among a step's metrics


def step_metrics(step: Mapping) -> dict:
  """The metrics logged for one step record (``cljax.eval.results``: a run's ``steps[i]``): the
  ``STEP_METRICS`` and ``extra/<name>`` for each figure of its ``extra``."""
  out = {k: step.get(k) for k in STEP_METRICS}
  out.update({EXTRA + k: v for k, v in (step.get("extra") or {}).items()})
  return out


class Logger(Protocol):
  """What the runner calls (``Loggers`` fans out to several)."""

  def log_step(self, run: str, step: int, examples_seen: int,
               metrics: Mapping[str, Optional[float]]) -> None:
    """End of time step ``step`` of learner ``run`` after ``examples_seen`` stream examples."""

  def log_eval(self, run: str, step: int, examples_seen: int, accuracy: float,
               metrics: Optional[Mapping[str, Optional[float]]] = None) -> None:
    """An anytime evaluation point (accuracy on the test examples of all seen classes, and any
    other ``STEP_METRICS`` measured there, e.g. ``test_loss``)."""

  def close(self) -> None:
    """Flushes and closes the files."""


def _finite(metrics: Mapping[str, Optional[float]]) -> dict:
  out = {}
  for k, v in metrics.items():
    if v is None:
      continue
    v = float(v)
    if math.isfinite(v):
      out[k] = v
  return out


def _tensorboardx():
  """tensorboardX's event writer, Event proto and scalar summary (imported when first needed,
  with a way out when it is missing)."""
  try:
    # pylint: disable=import-outside-toplevel
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2, summary_pb2
  except ImportError as e:
    raise ImportError(f"the tensorboard logger needs tensorboardX ({e}); `pip install "
                      "tensorboardX` (a cljax dependency), or drop 'tensorboard' from "
                      "--config.log") from None
  return EventsWriter, event_pb2, summary_pb2


class TensorBoardLogger:
  """Event files under ``root/<run>/`` (see the module docstring)."""

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    self._writers: dict = {}
    self._tbx = _tensorboardx()

  def _writer(self, run: str):
    if run not in self._writers:
      folder = os.path.join(self.root, run)
      os.makedirs(folder, exist_ok=True)
      writer = self._tbx[0](os.path.join(folder, "events"), f".{os.getpid()}.cljax")
      writer.flush()  # the file-version header, so TensorBoard lists the run at once
      self._writers[run] = writer
    return self._writers[run]

  def scalars(self, run: str, step: int, values: Mapping[str, float]) -> None:
    """Scalars ``{tag: value}`` of learner ``run`` at x = ``step``, in one event."""
    values = _finite(values)
    if values:
      _, event_pb2, summary_pb2 = self._tbx
      summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=v)
                                           for tag, v in values.items()])
      writer = self._writer(run)
      writer.write_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
      writer.flush()

  def log_step(self, run, step, examples_seen, metrics):
    del step
    self.scalars(run, examples_seen, {(k if k.startswith(EXTRA) else f"step/{k}"): v
                                      for k, v in metrics.items()})

  def log_eval(self, run, step, examples_seen, accuracy, metrics=None):
    del step
    self.scalars(run, examples_seen, {"anytime/accuracy": accuracy, **{
        f"anytime/{k}": v for k, v in (metrics or {}).items() if k != "accuracy"}})

  def close(self):
    for w in self._writers.values():
      w.close()
    self._writers = {}


class CSVLogger:
  """One CSV file of every learner's steps and evaluation points (module docstring)."""

  HEADER = ("run", "kind", "step", "examples_seen", *STEP_METRICS, "wall_time")

  def __init__(self, path: str):
    self.path = os.path.abspath(path)
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
    if not new:
      self._upgrade()
    self._f = open(self.path, "a", newline="")
    self._w = csv.writer(self._f)
    if new:
      self._w.writerow(self.HEADER)
      self._f.flush()

  def _upgrade(self) -> None:
    """A file from a version with fewer metric columns (a resumed older run) is rewritten with
    the current header, every row kept under its column name (new columns empty)."""
    with open(self.path, newline="") as f:
      rows = list(csv.DictReader(f))
      header = tuple(rows[0].keys()) if rows else None
    if header is None or header == self.HEADER:
      return
    tmp = self.path + ".tmp"
    with open(tmp, "w", newline="") as f:
      w = csv.DictWriter(f, self.HEADER, restval="", extrasaction="ignore")
      w.writeheader()
      w.writerows(rows)
    os.replace(tmp, self.path)

  def _row(self, run, kind, step, examples_seen, metrics):
    m = _finite(metrics)
    self._w.writerow([run, kind, int(step), int(examples_seen),
                      *[m.get(k, "") for k in STEP_METRICS], f"{time.time():.3f}"])
    self._f.flush()

  def log_step(self, run, step, examples_seen, metrics):
    self._row(run, "step", step, examples_seen, metrics)

  def log_eval(self, run, step, examples_seen, accuracy, metrics=None):
    self._row(run, "eval", step, examples_seen, {**(metrics or {}), "accuracy": accuracy})

  def close(self):
    self._f.close()


class Loggers:
  """Several loggers behind the one ``Logger`` interface (none: every call does nothing)."""

  def __init__(self, loggers: list):
    self.loggers = list(loggers)

  def log_step(self, run, step, examples_seen, metrics):
    for lg in self.loggers:
      lg.log_step(run, step, examples_seen, metrics)

  def log_eval(self, run, step, examples_seen, accuracy, metrics=None):
    for lg in self.loggers:
      lg.log_eval(run, step, examples_seen, accuracy, metrics)

  def log_result(self, run: str, result: Mapping) -> None:
    """Replays a finished run's result record (``cljax.eval.results.record``: its ``steps``
    and ``eval_points``) into the loggers, e.g. for runs made before logging was on."""
    for s in result.get("steps", []):
      self.log_step(run, s["step"], s["examples_seen"], step_metrics(s))
    for p in result.get("eval_points", []):
      self.log_eval(run, p["step"], p["examples_seen"], p["accuracy"],
                    {k: p[k] for k in STEP_METRICS if k != "accuracy" and k in p})

  def close(self):
    for lg in self.loggers:
      lg.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def parse_kinds(spec: str) -> list:
  """``"tensorboard,csv"`` -> ["tensorboard", "csv"]; unknown names raise ValueError."""
  kinds = [s.strip() for s in str(spec or "").split(",") if s.strip()]
  bad = [k for k in kinds if k not in KINDS]
  if bad:
    raise ValueError(f"unknown logger(s) {bad} in log={spec!r}; valid: {list(KINDS)} "
                     "(comma-separated, e.g. 'tensorboard,csv')")
  return kinds


def make(spec: str, workdir: str) -> Loggers:
  """The loggers named in ``spec`` writing under ``workdir`` (``""``: none)."""
  out = []
  for kind in parse_kinds(spec):
    if kind == "tensorboard":
      out.append(TensorBoardLogger(os.path.join(workdir, "tensorboard")))
    else:
      out.append(CSVLogger(os.path.join(workdir, "metrics.csv")))
  return Loggers(out)


# --- reading event files back ------------------------------------------------------------------

def read_events(path: str) -> list:
  """(step, tag, value) of every scalar (simple value) in a TensorBoard event file, in order.

  The file is TFRecord-framed ``Event`` protos: length (u64), its masked CRC-32C (u32), payload,
  the payload's masked CRC-32C (u32); decoded with tensorboardX's CRC and proto. Raises
  ValueError on a bad CRC (a file cut mid-write loses only its last record: it is left out with
  no error).
  """
  from tensorboardX.record_writer import masked_crc32c  # pylint: disable=import-outside-toplevel
  _, event_pb2, _ = _tensorboardx()
  with open(path, "rb") as f:
    data = f.read()
  out, i = [], 0
  while i + 12 <= len(data):
    length_b = data[i:i + 8]
    (n,) = struct.unpack("<Q", length_b)
    (crc,) = struct.unpack("<I", data[i + 8:i + 12])
    if crc != masked_crc32c(length_b):
      raise ValueError(f"{path}: bad length CRC at byte {i}")
    if i + 12 + n + 4 > len(data):
      break  # the last record was cut
    payload = data[i + 12:i + 12 + n]
    (crc,) = struct.unpack("<I", data[i + 12 + n:i + 16 + n])
    if crc != masked_crc32c(payload):
      raise ValueError(f"{path}: bad payload CRC at byte {i}")
    i += 16 + n
    event = event_pb2.Event.FromString(payload)
    for v in event.summary.value:
      if v.WhichOneof("value") == "simple_value":
        out.append((event.step, v.tag, v.simple_value))
  return out
