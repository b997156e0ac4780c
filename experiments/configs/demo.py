"""Demo: finetune vs ER vs offline on the 5,000 real MNIST digits, class-incremental, 5 tasks of
2 classes, 10 % of each step held out for validation. Measured: 4 min 57 s wall beside six other
agents' work, 1 min 54 s of CPU (notes/error_analysis.md; before the validation split and the
diagnostics: 3 min 53 s wall, 2 min 07 s of CPU, BUILD_NOTES.md)."""

from cljax.app.config_schema import base_config


def get_config():
  c = base_config()
  c.dataset = "mnist5k"
  c.stream.ordering = "class_incremental"
  c.stream.classes_per_step = 2
  c.stream.batch_size = 32
  c.learners = "finetune,er,offline"
  c.model = "cnn"
  c.budget.batch_size = 32
  c.budget.passes_per_step = 200  # ~8 epochs over each 800-example step
  c.hparams.finetune = dict(lr=1e-3)
  c.hparams.er = dict(lr=1e-3, memory_size=500, buffer="reservoir")
  c.hparams.offline = dict(lr=1e-3, epochs_per_step=6.0)
  c.eval.every_examples = 400
  # 10 % of each class of each step held out: val_loss / val_accuracy per step (loss_curves.png)
  c.eval.val_fraction = 0.1
  return c
