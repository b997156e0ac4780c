"""The workdir record: an experiment's fingerprint, its runs, and the learner-state layout.

A workdir holds one experiment. ``experiment.json`` records its fingerprint (the config keys that
decide what a run computes, and a digest of the data), every run in it with its learner and
hyper-parameters, and per run ``state_layout``, the layout of the learner states its checkpoints
hold (``STATE_LAYOUT``; a record without it was written before typed states: layout 1).
``results.json`` gathers every run's result. ``check`` compares an experiment with what the
workdir holds before anything trains, and refuses (``ConfigError``, naming the keys) a
fingerprint that differs, a run already there unless resuming, and checkpoints of another state
layout. Plain Python (json, os): the runner uses ``flatten`` and ``fingerprint_diff``
for its checkpoints' fingerprints too.

One writer per workdir: ``lock(workdir)`` holds ``WORKDIR/.lock`` (an exclusive ``flock``, plus
the holder's pid, host and start time written in the file) while a run writes there; a second
run is refused with one line naming the holder. The kernel drops a ``flock`` when its process
dies, however it dies (SIGKILL included), so a lock left by a killed run is stale by
construction: the next run takes it over (and says whose it was), and ``--resume`` after a
SIGKILL works.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from typing import Iterator, Optional

from cljax.app.config_schema import ConfigError

# The layout of learner states in checkpoints: 1 = dicts of arrays (before issue 26; records
# without ``state_layout`` hold those), 2 = typed states (a NamedTuple per learner). A checkpoint
# of another layout is never loaded: a resume is refused with one line (start a new workdir).
STATE_LAYOUT = 2

# Config keys that do not change what a run computes: left out of the fingerprint, so they may
# change between a run and its resume (another machine, other reports).
# (``on_divergence``, ``max_rollbacks`` and ``rollback_factor`` too: a run stopped by a
# divergence may be resumed with rollback.)
NOT_FINGERPRINTED = ("learners", "hparams", "num_devices", "num_processes", "checkpoint",
                     "plots", "log", "on_divergence", "max_rollbacks", "rollback_factor",
                     "eval.batch_size", "eval.omega_topk", "eval.omega_points",
                     "eval.omega_reference", "eval.latency_calls")


def flatten(d: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}; tuples become lists (their JSON form)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def fingerprint_diff(saved: dict, now: dict) -> list:
  """The keys of two flat fingerprints that differ, as ``"key (saved -> now)"`` strings."""
  missing = object()
  return [f"{k} ({saved.get(k, '<unset>')!r} -> {now.get(k, '<unset>')!r})"
          for k in sorted(set(saved) | set(now))
          if saved.get(k, missing) != now.get(k, missing)]


# Keys added after workdirs existed, left out of the fingerprint at the value that computes what
# the runs computed before them, so those workdirs still resume (a key missing from a recorded
# fingerprint would count as a difference).
OFF_VALUES = {"eval.val_fraction": 0.0, "eval.val_folds": 0, "eval.val_fold": 0,
              "eval.early_stop_every": 0}
# Keys that only matter while another is on: left out with it (settings of early stopping).
WHILE_ON = {"eval.early_stop_patience": "eval.early_stop_every",
            "eval.early_stop_metric": "eval.early_stop_every"}


def fingerprint(config: dict, data_sha256: str) -> dict:
  """The experiment's fingerprint: every key of ``config`` (the resolved config as a dict,
  ``Settings.config``) that decides what its runs compute (flat, e.g. ``stream.seed``; the
  ``OFF_VALUES`` keys only when set, ``WHILE_ON`` keys only while theirs is), and
  ``data_sha256``, a digest of the data set's arrays. A workdir written before a key existed
  still resumes while the key is off."""
  flat = flatten(dict(config))

  def off(k):
    return k in OFF_VALUES and flat.get(k, OFF_VALUES[k]) == OFF_VALUES[k]

  out = {k: v for k, v in flat.items()
         if not any(k == x or k.startswith(x + ".") for x in NOT_FINGERPRINTED)
         and not off(k) and not (k in WHILE_ON and off(WHILE_ON[k]))}
  out["data_sha256"] = data_sha256
  return json.loads(json.dumps(out))  # the JSON form, as read back from experiment.json


def run_entry(spec) -> dict:
  """A run's part of the fingerprint (``spec``: a ``settings.LearnerSpec``): its learner and
  hyper-parameters (flat)."""
  hp = flatten({"hparams": dict(spec.hparams)})
  return json.loads(json.dumps({"learner": spec.learner, **hp}))


def read_json(path: str, what: str):
  """The JSON in ``path`` (None when there is none); ConfigError when it cannot be read."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path} is unreadable ({type(e).__name__}: {str(e)[:120]}); it holds "
                      f"{what}: restore it, or use a new --workdir") from None


def prepare(workdir: str) -> str:
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


def checkpoint_steps(workdir: str, run_name: str) -> list:
  """The steps saved under ``workdir/checkpoints/<run_name>``, sorted."""
  d = os.path.join(workdir, "checkpoints", run_name)
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def layout_message(where: str, layout) -> str:
  """The one line refusing checkpoints of another learner-state layout."""
  return (f"{where} holds checkpoints of learner-state layout {layout} (1: dict states, "
          f"written before typed states); this cljax reads layout {STATE_LAYOUT} and never "
          "loads another: start a new --workdir (results.json keeps the finished runs' figures)")


def check(workdir: str, fp: dict, specs: list, resume: bool) -> tuple:
  """Checks an experiment against what ``workdir`` already holds, before anything trains.

  ``fp``: the experiment's ``fingerprint``; ``specs``: the runs about to be made
  (``settings.LearnerSpec``). Returns (the record to write, with those runs added; the runs
  already in results.json). ConfigError (one line) when the fingerprint or a run's
  hyper-parameters differ from the recorded ones, when a run is already in the workdir and
  ``resume`` is not set, and when a run to resume has checkpoints of another state layout.
  """
  record = read_json(os.path.join(workdir, "experiment.json"),
                     "the fingerprint of the runs in this workdir")
  previous = (read_json(os.path.join(workdir, "results.json"), "the results of earlier runs")
              or {}).get("runs", {})
  names = [s.name for s in specs]
  if record is None:
    old = [n for n in names if checkpoint_steps(workdir, n)] + list(previous)
    if old:
      raise ConfigError(f"{workdir} holds runs {sorted(set(old))} but no experiment.json (written "
                        "by an older cljax, or removed), so their config cannot be checked; use "
                        "a new --workdir")
    record = {"version": 1, "fingerprint": fp, "runs": {}, "state_layout": {}}
  differ = fingerprint_diff(record["fingerprint"], fp)
  for s in specs:
    if s.name in record["runs"]:
      differ += [f"{s.name}: {d}" for d in fingerprint_diff(record["runs"][s.name], run_entry(s))]
  if differ:
    raise ConfigError(f"{workdir} holds runs made with another config: {', '.join(differ)}; "
                      "use the recorded values, another run name (hparams.NAME.learner), or a "
                      "new --workdir")
  # Per run: records written before typed states have no ``state_layout`` (their runs: 1).
  layouts = record.get("state_layout")
  layouts = dict(layouts) if isinstance(layouts, dict) else {n: 1 for n in record["runs"]}
  for s in specs:
    steps = checkpoint_steps(workdir, s.name)
    if not resume and (steps or s.name in previous):
      state = ("finished, its results are in results.json" if s.name in previous else
               f"checkpoints up to step {steps[-1]}")
      raise ConfigError(f"run {s.name!r} is already in {workdir} ({state}); pass --resume to "
                        "continue or reuse it, or leave it out of --config.learners (runs not "
                        "yet in the workdir are added to results.json)")
    layout = layouts.get(s.name, STATE_LAYOUT)
    if steps and layout != STATE_LAYOUT:
      raise ConfigError(layout_message(f"run {s.name!r} in {workdir}", layout))
    record["runs"][s.name] = run_entry(s)
    layouts[s.name] = STATE_LAYOUT  # what its checkpoints will hold from now on
  record["state_layout"] = layouts
  return record, previous


def check_omega_reference(reference: str, names: list, previous: dict) -> None:
  """ConfigError unless ``reference`` (``eval.omega_reference``) is "" (no Ω), a run of this
  experiment or of an earlier call in the workdir (``previous``), or the default ``offline``
  (which may be absent: Ω is then None)."""
  if reference in ("", "offline") or reference in names or reference in previous:
    return
  raise ConfigError(f"eval.omega_reference {reference!r} is not a run of this experiment; "
                    f"valid: {sorted(set(names) | set(previous))} or '' (no Ω)")


# --- one writer per workdir ---------------------------------------------------------------------

LOCK_FILE = ".lock"
_HELD: dict = {}  # absolute workdir -> the open lock file of this process


def _holder(path: str) -> dict:
  """The holder record in lock file ``path`` ({} when empty or unreadable)."""
  try:
    with open(path) as f:
      rec = json.loads(f.read() or "{}")
    return rec if isinstance(rec, dict) else {}
  except (OSError, ValueError):
    return {}


def _busy(workdir: str, holder: dict) -> ConfigError:
  return ConfigError(
      f"--workdir {workdir} is in use by another run (pid {holder.get('pid', '?')} on host "
      f"{holder.get('host', '?')}, started {holder.get('started', '?')}); only one run may write "
      "to a workdir: wait for it to end (then --resume), stop it, or use another --workdir")


def _try_lock(workdir: str):
  """(the open lock file, locked) or raises ConfigError naming the holder."""
  path = os.path.join(workdir, LOCK_FILE)
  f = open(path, "a+")  # pylint: disable=consider-using-with  # held until release
  try:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.close()
    raise _busy(workdir, _holder(path)) from None
  return f


def check_unlocked(workdir: str) -> None:
  """ConfigError (one line naming the holder's pid and host) when another run holds ``workdir``
  (``lock``); a no-op when this process holds it. Takes nothing: a launcher's check."""
  workdir = os.path.abspath(workdir)
  if workdir in _HELD or not os.path.exists(os.path.join(workdir, LOCK_FILE)):
    return
  _try_lock(workdir).close()


@contextlib.contextmanager
def lock(workdir: str, log=lambda msg: None) -> Iterator[None]:
  """Holds ``workdir`` (which exists) for this process while the block runs (module docstring).

  ConfigError (one line naming the holder's pid, host and start time) when another process holds
  it. A lock file whose holder died is taken over, with one ``log`` line naming that holder.
  Re-entrant within a process (a nested ``lock`` of the same workdir is a no-op).
  """
  workdir = os.path.abspath(workdir)
  if workdir in _HELD:
    yield
    return
  f = _try_lock(workdir)
  try:
    old = _holder(f.name)
    if old:  # the lock is ours, so its last holder is gone without releasing it
      log(f"workdir: took over the lock of a run that ended without releasing it (pid "
          f"{old.get('pid', '?')} on host {old.get('host', '?')}, started "
          f"{old.get('started', '?')})")
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "started": datetime.datetime.now().isoformat(timespec="seconds")}))
    f.flush()
    _HELD[workdir] = f
    yield
  finally:
    _HELD.pop(workdir, None)
    try:
      f.seek(0)
      f.truncate()  # released cleanly: an empty file (a holder in it means a run that died)
    finally:
      f.close()  # drops the flock
