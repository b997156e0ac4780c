r"""DietCL against the budgeted baselines, built as its reference builds them (issues 6, 23).

  python experiments/run.py --workdir=/tmp/dietcl --config=experiments/configs/dietcl.py
  python experiments/run.py --workdir=DIR --config=experiments/configs/dietcl.py:scratch  # no MAE
  python experiments/studies/dietcl_regime.py --workdir=DIR2   # DietCL - ER along the regime axes

The point closest to the paper's ratios that runs in minutes on 2 CPU cores (fixed before any
learner was compared on it), against ImageNet10K (Zhang et al., ICLR 2024):

=========================  ==========================================  ===========================
quantity                   ImageNet10K (paper)                         this config
=========================  ==========================================  ===========================
steps x classes a step     20 x ~500                                   5 x 2 (Fashion-MNIST)
images a step              ~500,000                                    2,000 (``max_examples_
                                                                       per_step``; 1,000 a class)
labels                     1 % (~10 a class)                           1 % (10 a class, 20 a step)
budget a step              500 steps of 1,024 = ~1 pass                32 passes of 64 = 2,048
                                                                       rows = ~1 pass
B̄ (joint passes)           400 of 500 (80 %)                           26 of 32 (80 %)
base initialisation        MAE ViT-B on ImageNet-1k (in-domain,        MAE on the 50,000 Fashion
                           other images)                               training images the stream
                                                                       does not use (10 epochs)
model                      ViT-B/16 (196 patches, 12 blocks)           ``vit_micro``, patch 7 (16
                                                                       patches, 2 blocks)
=========================  ==========================================  ===========================

What cannot be kept: the number of optimizer steps a time step (500 there, 32 here), the
number of classes a step (the masked CE is a 2-way problem here) and the model size.

Base initialisation (``base_init.kind = "mae"``, ``base_init.dataset = "fashion_mnist"``): the
stream's own data set, so ``cljax.app.base_init`` trains on its training images the stream does
not use (in-domain, disjoint). No fallback: without Debian's ``dataset-fashion-mnist`` the run
stops with one ``error:`` line; results.json's ``base_init`` records the data set and the number
of images. Every learner that takes ``init_params`` starts from it.

Runs (every one the same budget, ``budget.passes_per_step`` passes of ``budget.batch_size``):
``dietcl`` (the paper's allocation), ``dietcl_ref`` (the reference code's), ``er`` (the
reference's ER, learner ``er_diet``: half current labels, half a buffer of earlier steps, the
same optimizer, schedule and Mixup/CutMix/label smoothing/crops as DietCL), ``er_plain`` (the
replay baseline as cljax builds it: Adam 1e-3, uniform over every label so far, no
regularisation), ``gdumb`` (retrained from the MAE start each step with the reference's Mixup/
CutMix, smoothing, crops and AdamW), ``ewc``/``mas`` (from the MAE start, plain CE), ``joint``
(upper bound, t·B at step t) and the paper's other baselines ``l2p``, ``cassle``, ``dualnet``,
``ccic``. Layer decay is 1 for every run: the reference's 0.65 is for 12 blocks, this ViT has 2.
"""

from cljax.app.config_schema import base_config

LEARNERS = ("dietcl,dietcl_ref,er,er_plain,gdumb,ewc,mas,joint,l2p,cassle,dualnet,ccic")
BATCH = 64
PASSES = 32  # per step: 32 x 64 = 2,048 rows, about one pass over a step's 2,000 images
THRESHOLD = 26  # B̄ in passes: 80 % of the budget joint, the paper's 400 of 500
STEP_IMAGES = 2000  # images a step (1,000 a class)
STREAM_ROWS = 5 * STEP_IMAGES  # a memory this large holds every label
MAE_EPOCHS = 10.0


def get_config(options: str = ""):
  """``options``, comma-separated:

  * ``base=PATH``: start from the MAE checkpoint folder PATH (an earlier run's WORKDIR/base_init
    or ``experiments/pretrain.py``'s) instead of training one;
  * ``scratch``: no MAE base initialisation;
  * ``small``: a quick smoke run (300 rows a step, 8 passes, 1 MAE epoch).
  """
  opts = {o.strip() for o in options.split(",") if o.strip()}
  base = next((o.split("=", 1)[1] for o in opts if o.startswith("base=")), "")
  opts = {o for o in opts if not o.startswith("base=")}
  bad = opts - {"scratch", "small"}
  if "tune" in bad:
    raise ValueError("the dietcl config option 'tune' is gone (configs are data): choose B̄ with "
                     "experiments/studies/dietcl_threshold.py, then pass "
                     "--config.hparams.dietcl.threshold=<B̄>; valid options: "
                     "['base=PATH', 'scratch', 'small']")
  if bad:
    raise ValueError(f"unknown dietcl config options {sorted(bad)}; valid: "
                     "['base=PATH', 'scratch', 'small']")
  c = base_config()
  c.dataset = "fashion_mnist"
  c.stream.ordering = "class_incremental"
  c.stream.classes_per_step = 2
  c.stream.max_examples_per_step = STEP_IMAGES
  c.stream.label_rate = 0.01
  c.stream.batch_size = 32
  c.learners = LEARNERS
  c.model = "vit_micro"
  c.model_kwargs = {"patch": 7}
  c.budget.batch_size = BATCH
  c.budget.passes_per_step = PASSES
  if "scratch" not in opts:
    c.base_init.kind = "mae"
    # The stream's own data set: cljax.app.base_init keeps the training images the stream does
    # not use. No "?": a missing data set stops the run, it never falls back silently.
    c.base_init.dataset = "fashion_mnist"
    c.base_init.epochs = MAE_EPOCHS
    c.base_init.batch_size = 256
    c.base_init.lr = 2e-3
    c.base_init.mask_ratio = 0.75
    c.base_init.checkpoint = base
  lr_per_256 = 1e-3 * 256 / BATCH  # peak 1e-3 at batch 64, the plain learners' step size
  # The reference's regularisation (timm Mixup/CutMix, label smoothing, RandomResizedCrop) and
  # memory (every label, tasks cut to min(current, previous): memory_size -1) are the learners'
  # defaults; flips are off (mirrored clothes are fine, but the digits configs share this
  # setting and it keeps the images as stored). min_lr keeps the reference's floor at 1/8 of
  # the peak (5e-5 of 4e-4). Layer decay 1: the reference's 0.65 is for 12 blocks.
  recipe = dict(lr=lr_per_256, min_lr=lr_per_256 / 8, flip=False, layer_decay=1.0)
  # DietCL, the paper's allocation: w_r = 1, B̄ = THRESHOLD joint passes, the rest buffer-only
  # at the full lr (the paper gives no lr for that phase).
  c.hparams.dietcl = dict(recipe, w_r=1.0, allocation="paper", threshold=THRESHOLD,
                          buffer_lr_scale=1.0)
  # DietCL with the reference code's recipe: 80 % joint (all at the first step) with 40 %
  # unlabeled rows, 20 % buffer-only at lr x 0.1, w_r = 50.
  c.hparams.dietcl_ref = dict(recipe, learner="dietcl", allocation="reference_code", w_r=50.0,
                              buffer_lr_scale=0.1, joint_fraction=0.8)
  # ER as the reference runs it (trainer/base.py): the registered learner `er_diet`.
  c.hparams.er = dict(recipe, learner="er_diet")
  # ER as cljax builds it (Prabhu et al.'s budgeted ER: a memory as large as the stream, uniform
  # over every label so far, at step ends only), from the same MAE start, no regularisation.
  c.hparams.er_plain = dict(learner="er", lr=1e-3, memory_size=STREAM_ROWS, buffer="reservoir",
                            iters_per_batch=0)
  # GDumb from the MAE start each step, with the reference's recipe and AdamW. chunk 2: its
  # loop is unrolled, and 8 unrolled ViT steps with crops and CutMix took 7 min to compile.
  c.hparams.gdumb = dict(lr=1e-3, memory_size=STREAM_ROWS, optimizer="adamw",
                         weight_decay=0.05, betas=(0.9, 0.95), mixup_alpha=0.8,
                         cutmix_alpha=1.0, label_smoothing=0.1, augment=True, flip=False,
                         chunk=2)
  c.hparams.ewc = dict(lr=1e-3, lam=100.0)
  c.hparams.mas = dict(lr=1e-3, lam=1.0)
  c.hparams.joint = dict(recipe)
  # The seed papers' baselines (issue 16), same budget. L2P: prompts on the frozen MAE-pretrained
  # ViT (no other pretrained ViT exists offline), the DietCL paper's variant with every labelled
  # row replayed; CaSSLe: Barlow Twins + predictive distillation, 4:1 SSL to fine-tuning; DualNet:
  # slow Barlow Twins learner + fast adaptation, sampling threshold 0.5; CCIC: interpolation
  # consistency + triplets, a memory as large as ER's. Projectors sized to the 32-wide ViT.
  c.hparams.l2p = dict(lr=0.03, pool_size=10, prompt_length=5, top_k=5, replay=True,
                       memory_size=STREAM_ROWS)
  c.hparams.cassle = dict(lr=1e-3, proj_dim=128, proj_hidden=128, pred_hidden=128,
                          memory_size=STREAM_ROWS)
  c.hparams.dualnet = dict(lr=1e-3, slow_lr=1e-3, threshold=0.5, proj_dim=128, proj_hidden=128,
                           memory_size=STREAM_ROWS)
  # CCIC at its reference lr 1e-4 (mammoth models/config/ccic.yaml), the learner's default.
  c.hparams.ccic = dict(memory_size=STREAM_ROWS)
  c.eval.every_examples = 0
  if "small" in opts:
    c.stream.max_examples_per_step = 300
    c.budget.passes_per_step = 8
    c.base_init.epochs = 1.0
  return c
