"""What the experiment binaries (``experiments/run.py``, ``experiments/pretrain.py``) share."""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import logging


def setup() -> None:
  """Quiet absl logging (orbax logs every save at INFO) and the persistent compile cache.

  With ``CLJAX_JAX_CACHE`` set, compiled programs are kept in that folder, so repeat runs (and
  the test suite on a fresh clone of the same machine) skip their compiles.
  """
  logging.set_verbosity(logging.WARNING)
  if os.environ.get("CLJAX_JAX_CACHE"):
    import jax  # pylint: disable=import-outside-toplevel
    jax.config.update("jax_compilation_cache_dir", os.environ["CLJAX_JAX_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run_or_exit(fn: Callable[[], object]) -> None:
  """Runs ``fn``; a bad config or bad data prints ``error: ...`` and exits with status 2."""
  from cljax.data.sources import DataError  # pylint: disable=import-outside-toplevel
  from cljax.train import experiment  # pylint: disable=import-outside-toplevel
  try:
    fn()
  except (experiment.ConfigError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
