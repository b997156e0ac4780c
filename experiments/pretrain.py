r"""Runs only the base initialisation of an experiment config and saves it for later runs.

  python experiments/pretrain.py --config=experiments/configs/remind.py --workdir=W
  python experiments/run.py --config=experiments/configs/remind.py --workdir=W   # loads W/base_init
  python experiments/run.py --config=OTHER.py --workdir=W2 \
      --config.base_init.checkpoint=W/base_init                                # loads it too

Trains config.model on the config's base set (``base_init``: supervised on the first classes of
the stream or on ``base_init.dataset``, or mae), printing progress (examples/s, ETA) and the test
accuracy on the base classes, and writes the orbax checkpoint to W/base_init, exactly where
``experiments/run.py`` looks. If W/base_init already exists it is loaded and evaluated, not
retrained. Bad config or data: one line `error: ...` and exit status 2.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "remind.py")


def _entry(config, workdir):
  from cljax.app import experiment, settings  # pylint: disable=import-outside-toplevel
  log = lambda m: print(m, flush=True)  # noqa: E731
  # The config is read here, once: below, only its typed settings travel.
  experiment.pretrain_base(settings.from_config(config, log), workdir, log=log)


def main(argv) -> int:
  from cljax.app import cli  # pylint: disable=import-outside-toplevel
  return cli.main(argv, _DEFAULT, _entry, doc=__doc__, resume_flag=False)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
