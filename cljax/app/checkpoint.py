"""One small module around orbax's ``CheckpointManager``: one checkpoint per time step.

A checkpoint holds two items: ``state`` (the learner's state pytree, restored into the shapes
and dtypes of a freshly initialised state) and ``meta`` (JSON: the run's metadata, e.g. stream
position, grain iterator state, metrics so far, serialised to one canonical JSON string, plus
the SHA-256 of everything the step holds). ``save`` copies the state to host memory, serialises
the metadata (both are snapshots: later changes by the caller do not leak in) and hands them to
one writer thread, which hashes them and runs orbax's whole save (about 36 ms of CPU for a 1 MB
state here, most of it Python): the training loop only pays for the copy, and a later save,
``wait`` or ``close`` waits for the one before (an error in the writer, e.g. a full disk, is
raised there, as ``CheckpointWriteError`` when the system refused a write).

Integrity. The digest covers every state leaf (its path in the tree, dtype, shape and bytes) and
the metadata string. ``restore_latest`` recomputes it from what orbax read back; a mismatch (bytes
changed on disk: orbax reads corrupted array chunks without complaint), a missing digest or any
orbax error makes the step *unreadable*: a warning, and the step before it is tried. Steps newer
than the one restored are moved aside to ``<directory>/unreadable.<step>`` (orbax silently skips
a save of a step that already exists, so a corrupt step left in place would never be
rewritten). orbax writes each step into a temporary folder and renames it when complete, so a
step cut off by a crash is never listed.

State layout. The ``meta`` item also records ``state_layout`` (``cljax.app.workdir.STATE_LAYOUT``:
how learner states are laid out, e.g. dicts before issue 26, typed records since). A checkpoint of
another layout (or of the earlier ``FORMAT`` 1, which had none) is not unreadable but foreign:
``restore_latest`` reads each step's ``meta`` item first and raises ``StateLayoutError`` (one
line: start a new workdir) without loading its state or moving anything aside.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import json
import logging
import os
import re
import shutil
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from cljax.app import distributed
from cljax.app.workdir import STATE_LAYOUT, layout_message
from cljax.ops import sharding

log = logging.getLogger(__name__)

# The layout of the ``meta`` item: {"format", "meta" (JSON string), "sha256", "state_layout"}
# (format 1, before issue 26, had no state_layout: its states are dicts, layout 1).
FORMAT = 2


class CheckpointError(RuntimeError):
  """No usable checkpoint (all unreadable), or a checkpoint that cannot be written."""


class StateLayoutError(CheckpointError):
  """Checkpoints of another learner-state layout: refused, never loaded or moved aside."""


class CheckpointWriteError(CheckpointError):
  """The system refused a checkpoint write (disk full, read-only, permissions)."""


def digest(state: Any, meta_json: str) -> str:
  """SHA-256 (hex) of a state pytree (each leaf's tree path, dtype, shape and bytes, in tree
  order; typed keys by their key data) and the metadata string ``meta_json``."""
  h = hashlib.sha256()
  for path, a in jax.tree_util.tree_flatten_with_path(state)[0]:
    a = np.ascontiguousarray(jax.random.key_data(a) if sharding.is_key(a) else np.asarray(a))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}\n".encode())
    h.update(a.data if a.size else b"")
  h.update(meta_json.encode())
  return h.hexdigest()


def _os_error(e: BaseException) -> Optional[OSError]:
  """The first OSError in ``e``'s chain of causes. orbax wraps them, and tensorstore raises a
  ValueError whose message ends ``[os_error_code='28']``: that is read back into an OSError."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, OSError):
      return e
    code = re.search(r"os_error_code='(\d+)'", str(e))
    if code:
      n = int(code.group(1))
      return OSError(n, os.strerror(n))
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


class _QuietWriterErrors(logging.Filter):
  """Drops orbax's ERROR log (with traceback) of a failed background write: the same error
  reaches ``Checkpointer.wait``, which reports it in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and "orbax" in record.pathname
                and "raised an exception" in record.getMessage())


logging.getLogger("absl").addFilter(_QuietWriterErrors())


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class Checkpointer:
  """Saves and restores (state, meta) per step under ``directory``. Use as a context manager:
  closing waits for any asynchronous save, without which the last save is lost.

  ``saved_step``: the newest step this object has finished writing (None before the first).
  """

  def __init__(self, directory: str, max_to_keep: Optional[int] = 3, async_save: bool = True,
               state_layout: int = STATE_LAYOUT):
    self.directory = os.path.abspath(directory)
    self.state_layout = state_layout  # written with every step, required of every restored one
    os.makedirs(self.directory, exist_ok=True)
    # In a multi-process run only the primary process writes (the state is gathered to its host
    # first, ``save``); every process reads the same folder. Each process's manager works on its
    # own (``active_processes``), so no orbax barrier waits for processes that do not write.
    self.writes = distributed.primary()
    multi = ({} if distributed.count() == 1 else dict(
        create=False, multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=distributed.index(), active_processes={distributed.index()})))
    # The writer thread is the asynchrony: orbax saves synchronously inside it.
    self._mgr = ocp.CheckpointManager(
        self.directory,
        # cleanup: the temporary folders of writes cut off by a crash are removed on opening.
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=False,
                                             cleanup_tmp_directories=self.writes, **multi),
        item_names=("state", "meta"))
    self._writer = concurrent.futures.ThreadPoolExecutor(1) if async_save else None
    self._pending: Optional[concurrent.futures.Future] = None
    self._pending_step: Optional[int] = None
    self.saved_step: Optional[int] = None
    self._closed = False

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    """Waits for the save in flight and releases the manager (again: a no-op)."""
    if self._closed:
      return
    try:
      self.wait()
    finally:
      if self._writer is not None:
        self._writer.shutdown(wait=True)  # an interrupted wait still lets the write finish
      self._mgr.close()
      self._closed = True

  def _write(self, step: int, state: Any, meta_json: str) -> None:
    item = {"format": FORMAT, "meta": meta_json, "sha256": digest(state, meta_json),
            "state_layout": self.state_layout}
    # Wrapped in a dict: StandardSave refuses a state that is a single array.
    self._mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"learner": state}), meta=ocp.args.JsonSave(item)))
    self.saved_step = step

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves step ``step``; returns once the state is copied to host memory and ``meta``
    (JSON-serialisable) is serialised. In a multi-process run every process calls it (the copy
    gathers arrays held partly by other processes) and the primary writes."""
    host = distributed.to_host(state)
    if not self.writes:
      self.saved_step = step
      return
    meta_json = json.dumps(meta, sort_keys=True)
    self._check_room(step, host, meta_json)
    if self._writer is None:
      self._pending_step = step
      self._guarded(lambda: self._write(step, host, meta_json))
      return
    self.wait()
    self._pending, self._pending_step = self._writer.submit(self._write, step, host,
                                                            meta_json), step

  def _check_room(self, step: int, host: Any, meta_json: str) -> None:
    """CheckpointWriteError before the write when the disk cannot hold the step: orbax's own
    failure midway leaves tensorstore writes in flight that print tracebacks from their
    threads. The need is the arrays' bytes plus the metadata, 10 % and 1 MiB of slack."""
    need = sum(int(np.asarray(jax.random.key_data(a) if sharding.is_key(a) else a).nbytes)
               for a in jax.tree.leaves(host)) + len(meta_json)
    need = int(need * 1.1) + (1 << 20)
    free = shutil.disk_usage(self.directory).free
    if free < need:
      raise CheckpointWriteError(
          f"no room left for checkpoint step {step} in {self.directory}: it needs about "
          f"{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free; free space, then rerun "
          "with --resume (steps saved before are intact)")

  def _guarded(self, fn) -> None:
    try:
      fn()
    except Exception as e:  # pylint: disable=broad-except
      os_err = _os_error(e)
      if os_err is None:
        raise
      what = ("no room left" if os_err.errno in _NO_ROOM else "the system refused the write")
      raise CheckpointWriteError(
          f"could not write checkpoint step {self._pending_step} to {self.directory}: {what} "
          f"({os_err.strerror or os_err}); free space or fix the folder, then rerun with "
          f"--resume (steps saved before are intact)") from None

  def wait(self) -> None:
    """Blocks until the last save is on disk; raises the writer's error, if any."""
    pending, self._pending = self._pending, None
    if pending is not None:
      self._guarded(pending.result)
    self._mgr.wait_until_finished()

  def steps(self) -> list:
    self.wait()
    self._mgr.reload()
    return sorted(self._mgr.all_steps())

  def _layout(self, step: int):
    """The state layout step ``step`` was written with (1 for format 1, which had none), or None
    when its ``meta`` item cannot be read (then the step is unreadable, see ``_read``)."""
    try:
      item = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception:  # pylint: disable=broad-except  # any error: left to _read
      return None
    if not isinstance(item, dict) or "format" not in item:
      return None
    return item.get("state_layout", 1) if item["format"] in (1, FORMAT) else None

  def _read(self, step: int, abstract) -> tuple:
    out = self._mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    item, state = out["meta"], out["state"]["learner"]
    if not isinstance(item, dict) or item.get("format") != FORMAT or "sha256" not in item:
      raise CheckpointError("no checksum (not written by this version of cljax)")
    if digest(state, item["meta"]) != item["sha256"]:
      raise CheckpointError("checksum mismatch: its files changed after they were written")
    return state, json.loads(item["meta"])

  def restore_latest(self, like_state: Any) -> Optional[tuple]:
    """(step, state, meta) of the newest readable, verified checkpoint, or None if there is none.

    ``like_state`` is a state of the right structure, shapes and dtypes (e.g. a fresh init).
    Unreadable steps newer than the one returned are moved to ``unreadable.<step>``. Raises
    ``CheckpointError`` when steps exist but none is readable, ``StateLayoutError`` at the newest
    step written with another learner-state layout (nothing is loaded or moved).
    """
    abstract = {"learner": jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)}
    bad = []
    for step in reversed(self.steps()):
      layout = self._layout(step)
      if layout is not None and layout != self.state_layout:
        raise StateLayoutError(layout_message(f"{self.directory} (step {step})", layout))
      try:
        state, meta = self._read(step, abstract)
      except Exception as e:  # pylint: disable=broad-except  # any error means unusable
        log.warning("checkpoint step %d in %s is unreadable (%s: %s); trying the one before",
                    step, self.directory, type(e).__name__, str(e)[:200])
        bad.append(step)
        continue
      for s in bad:
        if self.writes:
          self._set_aside(s)
      return step, state, meta
    if bad:
      raise CheckpointError(
          f"no readable checkpoint in {self.directory}: steps {bad} are all unreadable. "
          "Delete that folder to start the run over, or use a new --workdir")
    return None

  def _set_aside(self, step: int) -> None:
    src = os.path.join(self.directory, str(step))
    dst, n = os.path.join(self.directory, f"unreadable.{step}"), 1
    while os.path.exists(dst):
      dst, n = os.path.join(self.directory, f"unreadable.{step}.{n}"), n + 1
    shutil.move(src, dst)
    log.warning("moved unreadable checkpoint step %d to %s", step, dst)
    self._mgr.reload()
