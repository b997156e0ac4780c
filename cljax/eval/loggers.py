"""Loggers of a run: TensorBoard event files (written without TensorFlow) and CSV.

    log = loggers.make("tensorboard,csv", workdir)        # --config.log=tensorboard,csv
    log.log_step("er", step=t, examples_seen=n, metrics={"accuracy": A, "loss": l,
                 "budget_used": b, "examples_per_s": r})
    log.log_eval("er", step=t, examples_seen=n, accuracy=a)   # anytime evaluation points
    log.close()
    # or, after a run, replay its result record: log.log_result("er", results["runs"]["er"])

What a learner's run is logged as: per time step, ``step/<metric>`` for every metric given
(``accuracy`` = A(t), ``accuracy_seen`` = α(t), ``loss``, ``budget_used`` in forward-backward
passes, ``examples_per_s``), ``extra/<name>`` for each ``Info.extra`` figure of the learner (the
step's mean, ``step_metrics``), and ``anytime/accuracy`` per evaluation point; the x-axis is the
number of stream examples seen. None and NaN values are skipped.

* ``TensorBoardLogger``: ``WORKDIR/tensorboard/<run>/events.out.tfevents.<time>.<host>.<pid>``,
  one folder per learner so TensorBoard overlays them (``tensorboard --logdir WORKDIR/tensorboard``).
  The file is TFRecord-framed ``Event`` protos (length, masked CRC-32C of the length, payload,
  masked CRC-32C of the payload), written by hand: no TensorFlow or tensorboard needed to write.
  Every record is flushed, so a live TensorBoard sees it and a killed run keeps what it wrote.
* ``CSVLogger``: ``WORKDIR/metrics.csv``, one row per step or evaluation point of any learner:
  ``run, kind, step, examples_seen, <metrics...>, wall_time`` (appended across resumed runs;
  the ``extra/<name>`` figures differ by learner, so they go to TensorBoard only).

``read_events(path)`` decodes an event file (CRCs checked) back into (step, tag, value) rows.
"""

from __future__ import annotations

import csv
import math
import os
import socket
import struct
import time
from typing import Mapping, Optional, Protocol

# Metric columns a step row carries, in order (the CSV header); others are logged to TensorBoard
# only.
STEP_METRICS = ("accuracy", "accuracy_seen", "loss", "budget_used", "examples_per_s")
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

  def log_eval(self, run: str, step: int, examples_seen: int, accuracy: float) -> None:
    """An anytime evaluation point (accuracy on the test examples of all seen classes)."""

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


# --- CRC-32C (Castagnoli), TFRecord's checksum -------------------------------------------------

def _crc_table() -> list:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # reflected polynomial 0x1EDC6F41
    table.append(c)
  return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
  """CRC-32C of ``data`` (RFC 3720 B.4: crc32c(b"123456789") == 0xE3069283)."""
  c = 0xFFFFFFFF
  for b in data:
    c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: rotate right by 15 bits, add 0xa282ead8 (mod 2^32)."""
  c = crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(payload: bytes) -> bytes:
  """One TFRecord: length (u64), its masked CRC (u32), payload, the payload's masked CRC (u32)."""
  length = struct.pack("<Q", len(payload))
  return (length + struct.pack("<I", masked_crc32c(length)) + payload +
          struct.pack("<I", masked_crc32c(payload)))


# --- the few protobuf messages of an event file ------------------------------------------------
# tensorflow/core/util/event.proto: Event {double wall_time = 1; int64 step = 2;
#   oneof what {string file_version = 3; Summary summary = 5;}}
# tensorflow/core/framework/summary.proto: Summary {repeated Value value = 1;}
#   Value {string tag = 1; float simple_value = 2;}

def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1  # int64 fields are encoded as their two's complement
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _field(number: int, wire: int) -> bytes:
  return _varint((number << 3) | wire)


def _bytes_field(number: int, data: bytes) -> bytes:
  return _field(number, 2) + _varint(len(data)) + data


def event_bytes(wall_time: float, step: int, file_version: Optional[str] = None,
                scalars: Optional[Mapping[str, float]] = None) -> bytes:
  """An ``Event`` proto: a file-version header, or a summary of scalar values."""
  out = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(int(step))
  if file_version is not None:
    return out + _bytes_field(3, file_version.encode())
  values = b"".join(
      _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", v))
      for tag, v in (scalars or {}).items())
  return out + _bytes_field(5, values)


class TensorBoardLogger:
  """Event files under ``root/<run>/`` (see the module docstring)."""

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    self._files: dict = {}

  def _file(self, run: str):
    if run not in self._files:
      folder = os.path.join(self.root, run)
      os.makedirs(folder, exist_ok=True)
      name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
              f"{os.getpid()}.cljax")
      f = open(os.path.join(folder, name), "ab")
      f.write(tfrecord(event_bytes(time.time(), 0, file_version="brain.Event:2")))
      f.flush()
      self._files[run] = f
    return self._files[run]

  def scalars(self, run: str, step: int, values: Mapping[str, float]) -> None:
    """Scalars ``{tag: value}`` of learner ``run`` at x = ``step``, in one event."""
    values = _finite(values)
    if values:
      f = self._file(run)
      f.write(tfrecord(event_bytes(time.time(), step, scalars=values)))
      f.flush()

  def log_step(self, run, step, examples_seen, metrics):
    del step
    self.scalars(run, examples_seen, {(k if k.startswith(EXTRA) else f"step/{k}"): v
                                      for k, v in metrics.items()})

  def log_eval(self, run, step, examples_seen, accuracy):
    del step
    self.scalars(run, examples_seen, {"anytime/accuracy": accuracy})

  def close(self):
    for f in self._files.values():
      f.close()
    self._files = {}


class CSVLogger:
  """One CSV file of every learner's steps and evaluation points (module docstring)."""

  def __init__(self, path: str):
    self.path = os.path.abspath(path)
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
    self._f = open(self.path, "a", newline="")
    self._w = csv.writer(self._f)
    if new:
      self._w.writerow(["run", "kind", "step", "examples_seen", *STEP_METRICS, "wall_time"])
      self._f.flush()

  def _row(self, run, kind, step, examples_seen, metrics):
    m = _finite(metrics)
    self._w.writerow([run, kind, int(step), int(examples_seen),
                      *[m.get(k, "") for k in STEP_METRICS], f"{time.time():.3f}"])
    self._f.flush()

  def log_step(self, run, step, examples_seen, metrics):
    self._row(run, "step", step, examples_seen, metrics)

  def log_eval(self, run, step, examples_seen, accuracy):
    self._row(run, "eval", step, examples_seen, {"accuracy": accuracy})

  def close(self):
    self._f.close()


class Loggers:
  """Several loggers behind the one ``Logger`` interface (none: every call does nothing)."""

  def __init__(self, loggers: list):
    self.loggers = list(loggers)

  def log_step(self, run, step, examples_seen, metrics):
    for lg in self.loggers:
      lg.log_step(run, step, examples_seen, metrics)

  def log_eval(self, run, step, examples_seen, accuracy):
    for lg in self.loggers:
      lg.log_eval(run, step, examples_seen, accuracy)

  def log_result(self, run: str, result: Mapping) -> None:
    """Replays a finished run's result record (``cljax.eval.results.record``: its ``steps``
    and ``eval_points``) into the loggers, e.g. for runs made before logging was on."""
    for s in result.get("steps", []):
      self.log_step(run, s["step"], s["examples_seen"], step_metrics(s))
    for p in result.get("eval_points", []):
      self.log_eval(run, p["step"], p["examples_seen"], p["accuracy"])

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

def _read_varint(buf: bytes, i: int) -> tuple:
  shift = n = 0
  while True:
    b = buf[i]
    i += 1
    n |= (b & 0x7F) << shift
    shift += 7
    if not b & 0x80:
      return n, i


def _fields(buf: bytes):
  i = 0
  while i < len(buf):
    key, i = _read_varint(buf, i)
    number, wire = key >> 3, key & 7
    if wire == 0:
      v, i = _read_varint(buf, i)
    elif wire == 1:
      v, i = buf[i:i + 8], i + 8
    elif wire == 5:
      v, i = buf[i:i + 4], i + 4
    elif wire == 2:
      n, i = _read_varint(buf, i)
      v, i = buf[i:i + n], i + n
    else:
      raise ValueError(f"unsupported protobuf wire type {wire}")
    yield number, wire, v


def read_events(path: str) -> list:
  """(step, tag, value) of every scalar in a TensorBoard event file, in order.

  Raises ValueError on a bad CRC or a truncated record (a file cut mid-write loses only its
  last record: those are left out with no error).
  """
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
    step = 0
    for number, _, v in _fields(payload):
      if number == 2:
        step = v - (1 << 64) if v >= 1 << 63 else v
      elif number == 5:
        for vn, _, value in _fields(v):
          if vn != 1:
            continue
          tag, val = None, None
          for fn, _, fv in _fields(value):
            if fn == 1:
              tag = fv.decode()
            elif fn == 2:
              (val,) = struct.unpack("<f", fv)
          if tag is not None and val is not None:
            out.append((step, tag, val))
  return out
