"""Shared test setup: absl flags parsed (grain workers need it), the persistent compile cache, and
a counter of XLA compilations (``count_compiles``) for the no-recompile tests."""

import contextlib

from absl import flags
from jax._src import monitoring  # the event names below are what jax emits per lowering
import pytest

import cljax

flags.FLAGS.mark_as_parsed()
# cljax's own cache (set up on import: ~/.cache/cljax/jax unless CLJAX_JAX_CACHE says otherwise),
# outside the checkout, so a fresh clone on the same machine (CI) reuses compiled programs.
CACHE = cljax.compile_cache(check=True)

_LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"


@contextlib.contextmanager
def count_compiles():
  """Counts the programs jax lowers (every new compilation, cache hit or not) inside the block:
  ``with count_compiles() as n: ...; assert n[0] == 0``."""
  n = [0]

  def listener(event, duration, **kwargs):  # pylint: disable=unused-argument
    if event == _LOWERING:
      n[0] += 1

  monitoring.register_event_duration_secs_listener(listener)
  try:
    yield n
  finally:
    monitoring.unregister_event_duration_listener(listener)


@pytest.fixture
def compiles():
  """The ``count_compiles`` context manager, as a fixture."""
  return count_compiles


# The long files (experiment runs, subprocesses, ViT/ResNet compiles), scheduled first: with
# `--dist loadfile` each file goes to one worker whole (so its module fixtures run once), and a
# long file taken last leaves the other worker idle at the end.
LONG_FIRST = ("test_remind_config.py", "test_resume_devices.py", "test_dietcl.py",
              "test_quickstart.py", "test_dietcl_config.py", "test_runner.py",
              "test_base_init.py", "test_joint.py", "test_remind.py", "test_finetune_study.py",
              "test_dietcl_threshold.py", "test_dietcl_sweep.py", "test_replay.py",
              "test_learner.py", "test_gdumb.py", "test_penalty.py", "test_pure.py")


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  def rank(item):
    name = item.path.name
    return LONG_FIRST.index(name) if name in LONG_FIRST else len(LONG_FIRST)
  items.sort(key=rank)  # stable: the order inside a file is kept
