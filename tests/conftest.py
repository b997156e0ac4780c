"""Shared test setup: absl flags parsed (grain workers need it), a persistent compile cache."""

import os

from absl import flags
import jax

flags.FLAGS.mark_as_parsed()
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("CLJAX_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "jax")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
