r"""Runs a continual-learning experiment: several learners on one stream.

  python experiments/run.py --workdir=/tmp/demo
  python experiments/run.py --workdir=DIR --config=experiments/configs/demo.py \
      --config.stream.classes_per_step=5 --config.learners=er,offline --resume

Writes DIR/results.json, DIR/plots/*.png and checkpoints under DIR/checkpoints/<learner>/.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "demo.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results, plots and checkpoints go.",
                               required=True)
_RESUME = flags.DEFINE_bool("resume", False, "Continue from the latest complete checkpoint.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from cljax.train import cli, experiment  # pylint: disable=import-outside-toplevel
  cli.setup()
  cli.run_or_exit(lambda: experiment.run_experiment(_CONFIG.value, _WORKDIR.value,
                                                    resume=_RESUME.value))


if __name__ == "__main__":
  app.run(main)
