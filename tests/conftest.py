"""Shared test setup: absl flags parsed (grain workers need it), a persistent compile cache."""

import os

from absl import flags
import jax

flags.FLAGS.mark_as_parsed()
# Outside the checkout, so a fresh clone on the same machine (CI) reuses compiled programs.
CACHE = os.environ.setdefault("CLJAX_JAX_CACHE", os.path.expanduser("~/.cache/cljax/jax"))
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
