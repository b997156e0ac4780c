"""One small module around orbax's ``CheckpointManager``: one checkpoint per time step.

A checkpoint holds two items: ``state`` (the learner's state pytree, restored into the shapes
and dtypes of a freshly initialised state) and ``meta`` (JSON: stream position, grain iterator
state, metrics so far). orbax writes each step into a temporary folder and renames it when
complete, so a step cut off by a crash is never listed; a step that is listed but unreadable
(corrupt files) is skipped with a warning and the one before it is used.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  pass


class Checkpointer:
  """Saves and restores (state, meta) per step under ``directory``. Use as a context manager:
  closing waits for any asynchronous save, without which the last save is lost."""

  def __init__(self, directory: str, max_to_keep: Optional[int] = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    self._mgr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=async_save),
        item_names=("state", "meta"))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    self._mgr.wait_until_finished()
    self._mgr.close()

  def save(self, step: int, state: Any, meta: dict) -> None:
    self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def steps(self) -> list:
    self._mgr.reload()
    return sorted(self._mgr.all_steps())

  def restore_latest(self, like_state: Any) -> Optional[tuple]:
    """(step, state, meta) of the newest readable checkpoint, or None if there is none.

    ``like_state`` is a state of the right structure, shapes and dtypes (e.g. a fresh init).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
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
      return step, out["state"], out["meta"]
    if errors:
      raise CheckpointError(
          f"no readable checkpoint in {self.directory}: steps {[s for s, _ in errors]} are all "
          "corrupt. Delete the folder to start over (or run without --resume into a new workdir).")
    return None
