r"""The demo's class-incremental comparison with the distillation baselines: finetune, ER, LwF,
iCaRL and offline on the 5,000 real MNIST digits, 5 tasks of 2 classes, one budget.

  python experiments/run.py --workdir=/tmp/ci --config=experiments/configs/class_incremental.py
  python experiments/studies/seeds.py --workdir=/tmp/ci3 \
      --config=experiments/configs/class_incremental.py --seeds=0,1,2

The demo's settings (``experiments/configs/demo.py``: CNN, batch 32, 200 passes per step, Adam
1e-3) for every learner. ER and iCaRL keep 500 examples (iCaRL: exemplars chosen by herding,
split evenly over the classes seen; nearest-mean-of-exemplars prediction). LwF stores nothing
from earlier steps: it distils the previous step's network on the new data (λ = 1, T = 2, no T²
factor: Li and Hoiem's weight, mammoth's rule); ``lwf_t2`` is the same with the distillation
term multiplied by T² (Hinton's convention, 4x the weight: the pre-issue-23 default).
finetune and ER learn online from each incoming batch and spend the rest of the budget at the
step's end; LwF and iCaRL train at the step's end only. Teacher and feature forwards are charged
(1/3 pass per batch), so LwF and iCaRL take fewer SGD steps than ER within the same 200.
"""

from cljax.app.config_schema import base_config


def get_config():
  c = base_config()
  c.dataset = "mnist5k"
  c.stream.ordering = "class_incremental"
  c.stream.classes_per_step = 2
  c.stream.batch_size = 32
  c.learners = "finetune,er,lwf,lwf_t2,icarl,offline"
  c.model = "cnn"
  c.budget.batch_size = 32
  c.budget.passes_per_step = 200  # ~8 epochs over each 800-example step
  c.hparams.finetune = dict(lr=1e-3)
  c.hparams.er = dict(lr=1e-3, memory_size=500, buffer="reservoir")
  c.hparams.lwf = dict(lr=1e-3, lam=1.0, temperature=2.0)
  c.hparams.lwf_t2 = dict(learner="lwf", lr=1e-3, lam=1.0, temperature=2.0, t_squared=True)
  c.hparams.icarl = dict(lr=1e-3, memory_size=500)
  c.hparams.offline = dict(lr=1e-3, epochs_per_step=6.0)
  c.eval.every_examples = 400
  return c
