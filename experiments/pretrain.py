r"""Runs only the base initialisation of an experiment config and saves it for later runs.

  python experiments/pretrain.py --config=experiments/configs/remind.py --workdir=W
  python experiments/run.py --config=experiments/configs/remind.py --workdir=W   # loads W/base_init
  python experiments/run.py --config=OTHER.py --workdir=W2 \
      --config.base_init.checkpoint=W/base_init                                # loads it too

Trains config.model on the config's base set (``base_init``: supervised on the first classes of
the stream or on ``base_init.dataset``, or mae), printing progress (examples/s, ETA) and the test
accuracy on the base classes, and writes the orbax checkpoint to W/base_init, exactly where
``experiments/run.py`` looks. If W/base_init already exists it is loaded and evaluated, not
retrained. Bad config or data: a message and exit status 2.
"""

import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "remind.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The base model goes to WORKDIR/base_init.",
                               required=True)


def pretrain(config, workdir: str, log=print):
  """Validates ``config``, builds its stream and runs (or loads) its base initialisation.

  Returns the ``experiment.BaseInit``. Raises ``experiment.ConfigError`` when the config has no
  base initialisation or is invalid, ``DataError`` for bad data.
  """
  from cljax.train import experiment  # pylint: disable=import-outside-toplevel
  experiment.validate_config(config)
  if not experiment.base_init_active(config):
    raise experiment.ConfigError(
        "the config has no base initialisation: set base_init.classes > 0, "
        "base_init.kind='mae' or base_init.checkpoint")
  if config.base_init.checkpoint:
    raise experiment.ConfigError(
        f"base_init.checkpoint is set ({config.base_init.checkpoint}): nothing to pretrain; "
        "clear it (--config.base_init.checkpoint='') to train one")
  os.makedirs(workdir, exist_ok=True)
  stream = experiment.make_stream(config)
  log(f"stream: {stream.describe()}")
  t0 = time.perf_counter()
  base = experiment.base_model(config, stream, workdir, log)
  log(f"[pretrain] {base.kind} base init of {config.model} ({len(base.x)} examples) in "
      f"{time.perf_counter() - t0:.1f}s; checkpoint: {base.path}")
  return base


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if os.environ.get("CLJAX_JAX_CACHE"):  # persistent compile cache: repeat runs skip compiles
    import jax  # pylint: disable=import-outside-toplevel
    jax.config.update("jax_compilation_cache_dir", os.environ["CLJAX_JAX_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  from cljax.train import experiment  # pylint: disable=import-outside-toplevel
  from cljax.data.sources import DataError  # pylint: disable=import-outside-toplevel
  try:
    pretrain(_CONFIG.value, _WORKDIR.value, log=lambda m: print(m, flush=True))
  except (experiment.ConfigError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
