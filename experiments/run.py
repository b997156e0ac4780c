r"""Runs a continual-learning experiment: several learners on one stream.

  python experiments/run.py --workdir=/tmp/demo
  python experiments/run.py --workdir=DIR --config=experiments/configs/demo.py \
      --config.stream.classes_per_step=5 --config.learners=er,offline --resume
  python experiments/run.py --workdir=DIR --config.dataset=npz \
      --config.dataset_kwargs.path=data.npz --config.hparams.er.memory_size=500

Writes DIR/results.json (every run made in DIR), DIR/experiment.json (the config fingerprint),
DIR/plots/*.png and checkpoints under DIR/checkpoints/<learner>/. --resume continues the runs
from their newest verified checkpoints and ends exactly where an uninterrupted run would; a
config that differs from the recorded one is refused. Bad input: one line `error: ...` and exit
status 2; SIGTERM / SIGINT: the checkpoint being written finishes, exit 143 / 130.

Several processes (jax.distributed; README "Scale-out"):

  python experiments/run.py --workdir=DIR --config.num_processes=2       # both on this machine
  python experiments/run.py --workdir=DIR --config.num_processes=4 \
      --coordinator_address=host0:1234 --process_id=I                    # on host I of 4
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "demo.py")


def _entry(config, workdir, resume):
  # pylint: disable=import-outside-toplevel
  from cljax.app import distributed, experiment, settings
  log = distributed.log
  # The config is read here, once: below, only its typed settings travel.
  experiment.run(settings.from_config(config, log), workdir, resume=resume, log=log)


def _check(config, workdir, resume):
  from cljax.app import experiment, settings  # pylint: disable=import-outside-toplevel
  quiet = lambda msg: None  # noqa: E731
  experiment.prepare(settings.from_config(config, quiet), workdir, resume, log=quiet)


def main(argv) -> int:
  from cljax.app import cli  # pylint: disable=import-outside-toplevel
  return cli.main(argv, _DEFAULT, _entry, doc=__doc__, check=_check)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
