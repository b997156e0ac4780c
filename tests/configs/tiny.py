"""A small, fast experiment for subprocess tests: digits, MLP, finetune and ER, 5 steps (ER's
memory of 160 items splits over 2, 4 or 8 devices)."""

from cljax.app.config_schema import base_config


def get_config():
  c = base_config()
  c.dataset = "digits"
  c.model = "mlp"
  c.learners = "finetune,er"
  c.stream.batch_size = 32
  c.stream.max_examples_per_step = 200
  c.budget.passes_per_step = 25
  c.hparams.finetune = dict(lr=3e-3)
  c.hparams.er = dict(lr=3e-3, memory_size=160, iters_per_batch=1)
  c.eval.every_examples = 150
  c.plots = False
  return c
