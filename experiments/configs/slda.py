"""Deep SLDA on a frozen base-initialised CNN vs finetune / ER / offline, on real MNIST digits.

A small CNN is trained on the first 4 classes (step 0, the base set); Deep SLDA fits its
statistics to the 128-d features of that frozen network on the base set (class means plus an
OAS-shrunk covariance, the reference's ``fit_base``; tyler-hayes/Deep_SLDA ``experiment.py``
103-129), skips the base set when the stream replays it as step 0, and streams the other classes
through its streaming-LDA head, one pass, no backward pass. ``slda`` streams the covariance
(plastic), ``slda_fixed`` keeps the base set's (the paper's two variants). finetune, ER and
offline start from the same base network and train it end to end.
Set --config.dataset=fashion_mnist (with --config.dataset_kwargs... ) to run on Fashion-MNIST;
seeds: ``experiments/studies/seeds.py --config=experiments/configs/slda.py``.
"""

from cljax.app.config_schema import base_config


def get_config():
  c = base_config()
  c.dataset = "mnist5k"
  c.stream.ordering = "class_incremental"
  c.stream.classes_per_step = 2
  c.stream.batch_size = 32
  c.base_init.classes = 4
  c.base_init.epochs = 8.0
  c.base_init.lr = 1e-3
  c.model = "cnn"
  c.learners = "slda,slda_fixed,finetune,er,offline"
  c.budget.batch_size = 32
  c.budget.passes_per_step = 150
  # skip_base_step: step 0 is the base set that init already fitted (base_init.classes > 0).
  c.hparams.slda = dict(shrinkage=1e-4, covariance="plastic", update_rule="reference",
                        skip_base_step=True)
  c.hparams.slda_fixed = dict(c.hparams.slda.to_dict(), learner="slda", covariance="fixed")
  c.hparams.finetune = dict(lr=1e-3)
  c.hparams.er = dict(lr=1e-3, memory_size=300)
  c.hparams.offline = dict(lr=1e-3, epochs_per_step=5.0)
  c.eval.every_examples = 0
  return c
