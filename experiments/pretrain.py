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

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "remind.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The base model goes to WORKDIR/base_init.",
                               required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from cljax.train import cli, experiment  # pylint: disable=import-outside-toplevel
  cli.setup()
  cli.run_or_exit(lambda: experiment.run_base_init(_CONFIG.value, _WORKDIR.value,
                                                   log=lambda m: print(m, flush=True)))


if __name__ == "__main__":
  app.run(main)
