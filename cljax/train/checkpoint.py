"""One small module around orbax's ``CheckpointManager``: one checkpoint per time step.

A checkpoint holds two items: ``state`` (the learner's state pytree, restored into the shapes
and dtypes of a freshly initialised state) and ``meta`` (JSON: stream position, grain iterator
state, metrics so far). ``save`` copies the state to host memory and hands it to one writer
thread, which runs orbax's whole save (about 36 ms of CPU for a 1 MB state here, most of it
Python): the training loop only pays for the copy, and a later save, ``wait`` or ``close`` waits
for the one before (an error in the writer, e.g. a full disk, is raised there). orbax writes each step into a temporary folder and renames it when
complete, so a step cut off by a crash is never listed; a step that is listed but unreadable
(corrupt files) is skipped with a warning and the one before it is used.
"""

from __future__ import annotations

import concurrent.futures
import copy
import logging
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  pass


def _host_copy(a):
  """A host copy of array ``a`` that no later donation of ``a``'s buffer can change (on CPU,
  ``np.asarray`` of a jax array may be a view of it)."""
  if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
    return a  # typed keys stay jax arrays (orbax saves their key data)
  return np.array(a, copy=True)


class Checkpointer:
  """Saves and restores (state, meta) per step under ``directory``. Use as a context manager:
  closing waits for any asynchronous save, without which the last save is lost."""

  def __init__(self, directory: str, max_to_keep: Optional[int] = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    # The writer thread is the asynchrony: orbax saves synchronously inside it.
    self._mgr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=False),
        item_names=("state", "meta"))
    self._writer = concurrent.futures.ThreadPoolExecutor(1) if async_save else None
    self._pending: Optional[concurrent.futures.Future] = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    try:
      self.wait()
    finally:
      if self._writer is not None:
        self._writer.shutdown(wait=True)
      self._mgr.close()

  def _write(self, step: int, state: Any, meta: dict) -> None:
    # Wrapped in a dict: StandardSave refuses a state that is a single array.
    self._mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"learner": state}), meta=ocp.args.JsonSave(meta)))

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves step ``step``; returns once the state is copied to host memory."""
    host = jax.tree.map(_host_copy, state)
    meta = copy.deepcopy(meta)  # the caller keeps appending to its lists while the writer runs
    if self._writer is None:
      self._write(step, host, meta)
      return
    self.wait()
    self._pending = self._writer.submit(self._write, step, host, meta)

  def wait(self) -> None:
    """Blocks until the last save is on disk; raises the writer's error, if any."""
    pending, self._pending = self._pending, None
    if pending is not None:
      pending.result()
    self._mgr.wait_until_finished()

  def steps(self) -> list:
    self.wait()
    self._mgr.reload()
    return sorted(self._mgr.all_steps())

  def restore_latest(self, like_state: Any) -> Optional[tuple]:
    """(step, state, meta) of the newest readable checkpoint, or None if there is none.

    ``like_state`` is a state of the right structure, shapes and dtypes (e.g. a fresh init).
    """
    abstract = {"learner": jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)}
    errors = []
    for step in reversed(self.steps()):
      try:
        out = self._mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      except Exception as e:  # orbax raises many types for corrupt data; any means unusable
        log.warning("checkpoint step %d in %s is unreadable (%s: %s); trying the one before",
                    step, self.directory, type(e).__name__, str(e)[:200])
        errors.append((step, e))
        continue
      return step, out["state"]["learner"], out["meta"]
    if errors:
      raise CheckpointError(
          f"no readable checkpoint in {self.directory}: steps {[s for s, _ in errors]} are all "
          "corrupt. Delete the folder to start over (or run without --resume into a new workdir).")
    return None
