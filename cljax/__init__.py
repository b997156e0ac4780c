"""cljax: continual, streaming and incremental learning in JAX/Flax.

Importing cljax turns on JAX's persistent compilation cache (``compile_cache``): compiled programs
are kept in ``$XDG_CACHE_HOME/cljax/jax`` (``~/.cache/cljax/jax``), so the second run of a
config, a seed or a hyper-parameter skips most of its compiles. ``CLJAX_JAX_CACHE=DIR`` moves it,
``CLJAX_JAX_CACHE=`` (empty) leaves JAX's cache settings alone (off unless JAX's own
``JAX_COMPILATION_CACHE_DIR`` is set), and so does a cache folder set in JAX before the import.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Optional

__version__ = "0.1.0"

CACHE_ENV = "CLJAX_JAX_CACHE"
# Every compiled program is kept, however short its compile: a run compiles a few large programs
# (a learner's update, its training chunk: seconds each on 2 cores) and dozens of small ones
# (eager ops, the runner's helpers, evaluation: 10-100 ms each) that together cost seconds too; a
# cache hit costs about a millisecond. JAX's defaults (1 s, and a minimum entry size) keep only
# the large ones.
MIN_COMPILE_SECS = 0.0


def default_cache_dir() -> str:
  """``$XDG_CACHE_HOME/cljax/jax``, ``~/.cache/cljax/jax`` when XDG_CACHE_HOME is unset."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "cljax", "jax")


def cache_dir() -> Optional[str]:
  """The folder cljax keeps compiled programs in: ``$CLJAX_JAX_CACHE`` when set (None when set
  empty: no cache), else ``default_cache_dir()``."""
  if CACHE_ENV in os.environ:
    return os.environ[CACHE_ENV] or None
  return default_cache_dir()


_JAX_ENV = {"JAX_COMPILATION_CACHE_DIR": None,  # filled with the folder
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(MIN_COMPILE_SECS),
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}  # -1: no size threshold


def compile_cache(check: bool = False) -> Optional[str]:
  """Turns on JAX's persistent compilation cache in ``cache_dir()``; returns the folder in use
  (None: off, or left to the user's own JAX settings). Idempotent; runs on ``import cljax``.

  Before jax is imported this only sets JAX's own environment variables
  (``JAX_COMPILATION_CACHE_DIR`` and the two thresholds, each unless already set), so importing
  cljax (e.g. a config, which must stay data) imports nothing and touches no file; processes
  started from this one inherit the setting. Once jax is imported it sets ``jax.config``, unless
  the user set a cache folder there. ``check`` (the binaries, the tests): the folder is created
  and must be writable, else one warning and no cache (JAX alone would warn at every compile).

  Several processes may share the folder (the test suite's workers, several runs): JAX 0.10
  writes an entry once under its key and never rewrites it; in a multi-process run only process
  0 writes; a reader that meets an entry still being written gets a warning and compiles the
  program itself (entries are zlib streams with a checksum). The folder is not bounded in size
  (JAX bounds it only with the ``filelock`` package): delete it to reclaim the space.
  """
  path = cache_dir()
  if path is None:
    return None
  path = os.path.abspath(os.path.expanduser(path))
  jax = sys.modules.get("jax")
  if jax is None:
    if CACHE_ENV in os.environ:  # an explicit folder wins over JAX's own variable
      os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    for k, v in _JAX_ENV.items():
      os.environ.setdefault(k, path if v is None else v)
    path = os.environ["JAX_COMPILATION_CACHE_DIR"]
  else:
    theirs = jax.config.jax_compilation_cache_dir
    if theirs and theirs != path and CACHE_ENV not in os.environ:
      return theirs
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  if check and not _writable(path):
    warnings.warn(f"cljax: the compile cache folder {path} cannot be written; running without "
                  f"a persistent compile cache (set {CACHE_ENV}=DIR to a writable folder, or "
                  f"{CACHE_ENV}= to turn it off)")
    if jax is None:
      del os.environ["JAX_COMPILATION_CACHE_DIR"]
    else:
      jax.config.update("jax_compilation_cache_dir", None)
    return None
  return path


def _writable(path: str) -> bool:
  try:
    os.makedirs(path, exist_ok=True)
    return os.access(path, os.W_OK)
  except OSError:
    return False


compile_cache()
