"""Shared test setup: absl flags parsed (grain workers need it), a persistent compile cache."""

import os

from absl import flags
import jax

flags.FLAGS.mark_as_parsed()
# Outside the checkout, so a fresh clone on the same machine (CI) reuses compiled programs.
CACHE = os.environ.setdefault("CLJAX_JAX_CACHE", os.path.expanduser("~/.cache/cljax/jax"))
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# The long files (experiment runs, subprocesses, ViT/ResNet compiles), scheduled first: with
# `--dist loadfile` each file goes to one worker whole (so its module fixtures run once), and a
# long file taken last leaves the other worker idle at the end.
LONG_FIRST = ("test_remind_config.py", "test_resume_devices.py", "test_dietcl.py",
              "test_dietcl_config.py", "test_runner.py", "test_joint.py", "test_remind.py",
              "test_finetune_study.py", "test_baselines.py", "test_sgd.py")


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  def rank(item):
    name = item.path.name
    return LONG_FIRST.index(name) if name in LONG_FIRST else len(LONG_FIRST)
  items.sort(key=rank)  # stable: the order inside a file is kept
