r"""DietCL against the budgeted baselines on a real sparsely labelled stream (issue 6).

  python experiments/run.py --workdir=/tmp/dietcl --config=experiments/configs/dietcl.py
  python experiments/run.py --workdir=DIR --config=experiments/configs/dietcl.py:tune   # B̄ by
      validation on the first 3 steps (dietcl_tuning.select_threshold), then the run
  python experiments/run.py --workdir=DIR --config=experiments/configs/dietcl.py:scratch  # no MAE

Stream: the 5,000 real MNIST digits (``mnist5k``, 4,000 train), class-incremental, 5 steps of 2
classes, 5 % of the labels kept (≈40 labelled rows per step). Model: ``vit_micro`` (32 wide, 2
blocks, MAE decoder 32x1), patch 7 (16 patches of 28x28), small enough for minutes on 2 CPU cores.

Base initialisation (``base_init.kind = "mae"``): MAE pre-training of that ViT on the 60,000
*Fashion-MNIST* training images (``base_init.dataset = "fashion_mnist"``, labels unused): an
out-of-domain unlabeled set of the same image format, as ImageNet-1k is for DietCL's ImageNet10K
stream. Not the stream's own images: those arrive over time, and pre-training on them would leak
the future. Without Debian's ``dataset-fashion-mnist`` the config falls back to the stream's
training images (said in the log; documented in notes/dietcl.md).

Every learner gets the same budget: ``budget.passes_per_step`` passes of ``budget.batch_size``
rows per step (learners charge every forward-backward, EWC/MAS their importance pass, GDumb its
retraining). ``joint`` is the upper bound (SSL on all unlabeled data so far, then fine-tuning on
all labels, the cumulative budget 80/20; it spends t·B at step t, see ``cljax/learners/joint.py``).
The normal run path writes the A(t) curve (plots/) and the final / average accuracy table.
"""

from cljax.train.experiment import base_config

LEARNERS = "dietcl,er,gdumb,ewc,mas,joint"
BATCH = 48
PASSES = 80  # per step; the sweep (experiments/studies/dietcl_sweep.py) varies it
THRESHOLD = 20  # B̄ in passes, chosen by `tune` (validation, MAE start); notes/dietcl.md
THRESHOLD_CANDIDATES = (0, 20, 40, 60, 80)


def _fashion_installed() -> bool:
  try:
    from cljax import data  # pylint: disable=import-outside-toplevel
    data.load("fashion_mnist", max_train=10, max_test=10)
    return True
  except Exception:  # pylint: disable=broad-except  # DataError, or a broken install
    return False


def get_config(options: str = ""):
  """``options``, comma-separated:

  * ``tune``: choose B̄ by validation on the first 3 steps (``tune_threshold``) before the run;
  * ``base=PATH``: start from the MAE checkpoint folder PATH (an earlier run's WORKDIR/base_init
    or ``experiments/pretrain.py``'s) instead of training one; ``tune`` then starts from it too;
  * ``scratch``: no MAE base initialisation;
  * ``small``: a quick smoke run (300 rows a step, 20 passes, 1 MAE epoch on the stream's 4,000
    training images).
  """
  opts = {o.strip() for o in options.split(",") if o.strip()}
  base = next((o.split("=", 1)[1] for o in opts if o.startswith("base=")), "")
  opts = {o for o in opts if not o.startswith("base=")}
  bad = opts - {"tune", "scratch", "small"}
  if bad:
    raise ValueError(f"unknown dietcl config options {sorted(bad)}; valid: "
                     "['base=PATH', 'scratch', 'small', 'tune']")
  c = base_config()
  c.dataset = "mnist5k"
  c.stream.ordering = "class_incremental"
  c.stream.classes_per_step = 2
  c.stream.label_rate = 0.05
  c.stream.batch_size = 32
  c.learners = LEARNERS
  c.model = "vit_micro"
  c.model_kwargs = {"patch": 7}
  c.budget.batch_size = BATCH
  c.budget.passes_per_step = PASSES
  if "scratch" not in opts:
    c.base_init.kind = "mae"
    c.base_init.dataset = "fashion_mnist" if _fashion_installed() else ""
    c.base_init.epochs = 4.0
    c.base_init.batch_size = 256
    c.base_init.lr = 2e-3
    c.base_init.mask_ratio = 0.75
    c.base_init.checkpoint = base
  lr_per_256 = 1e-3 * 256 / BATCH  # peak 1e-3 at batch 48, the same step size as the SGD learners
  # DietCL: the paper's allocation; w_r = 1 and no layer decay for this 2-block ViT (w_r = 50 and
  # 0.65 are the reference code's for ViT-B). B̄ = THRESHOLD passes of the 80 joint, the rest
  # buffer-only at the full lr (the paper gives no lr for that phase; the reference code's x0.1
  # belongs to its 80/20 split and starves the buffer phase here). Both measured in
  # notes/dietcl.md; ``tune`` re-chooses B̄ by validation.
  c.hparams.dietcl = dict(lr=lr_per_256, w_r=1.0, layer_decay=1.0, allocation="paper",
                          threshold=THRESHOLD, buffer_lr_scale=1.0, memory_size=200)
  c.hparams.er = dict(lr=1e-3, memory_size=200, buffer="reservoir")
  c.hparams.gdumb = dict(lr=1e-3, memory_size=200)
  c.hparams.ewc = dict(lr=1e-3, lam=100.0)
  c.hparams.mas = dict(lr=1e-3, lam=1.0)
  c.hparams.joint = dict(lr=lr_per_256, layer_decay=1.0)
  c.eval.every_examples = 0
  if "small" in opts:
    c.stream.max_examples_per_step = 300
    c.budget.passes_per_step = 20
    c.base_init.epochs = 1.0
    c.base_init.dataset = ""
  if "tune" in opts:
    tune_threshold(c)
  return c


def tune_threshold(c, candidates=THRESHOLD_CANDIDATES, repeats: int = 2, log=print) -> dict:
  """Sets ``c.hparams.dietcl.threshold`` to the best of ``candidates`` by validation on the first
  3 steps of the config's stream (``cljax.learners.dietcl_tuning.select_threshold``: stratified
  20 % of each step's labels held out, never the test set; ``repeats`` draws averaged). Starts
  from ``base_init.checkpoint`` when set (the run's own MAE model), else from scratch (the
  tuning runs before a run trains its base initialisation). Returns the selection's result."""
  import jax  # pylint: disable=import-outside-toplevel
  from cljax.learners import _common, dietcl_tuning  # pylint: disable=import-outside-toplevel
  from cljax.train import experiment, pretrain  # pylint: disable=import-outside-toplevel
  hp = {k: v for k, v in c.hparams.dietcl.to_dict().items() if k != "threshold"}
  stream = experiment.make_stream(c)
  mkw = c.model_kwargs.to_dict()
  if c.base_init.kind == "mae" and c.base_init.checkpoint:
    like = _common.pure_model(c.model, stream.dataset.train.example_shape,
                              stream.dataset.num_classes, jax.random.key(0), mkw).params
    hp["init_params"] = pretrain.load_params(c.base_init.checkpoint, like)
    log(f"[threshold] starting from {c.base_init.checkpoint}")
  res = dietcl_tuning.select_threshold(
      stream, candidates, budget=int(c.budget.passes_per_step),
      stream_batch_size=int(c.stream.batch_size), seed=int(c.seed), repeats=repeats, log=log,
      model=c.model, model_kwargs=mkw, batch_size=int(c.budget.batch_size), **hp)
  c.hparams.dietcl.threshold = int(res["best"])
  log(f"[threshold] chose B̄ = {res['best']} of {list(candidates)}: {res['scores']}")
  return res
