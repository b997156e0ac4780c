"""Head-to-head of streaming learners on frozen features: one backbone, one stream.

EfficientNet-Lite0 with its real ImageNet weights, frozen, at 64 px (``cljax.data.features``
caches its pooled 1,280-d features of every image once), then one pass over the stream:

* closed-form heads, no backward pass: ``ncm`` (euclidean) and ``ncm_cos`` (SimpleCIL's cosine
  prototypes), ``slda`` (Deep SLDA), ``klda`` (RanDumb's head, random Fourier features + LDA, on
  the backbone's features: KLDA), ``ranpac`` (random ReLU projection + ridge, λ by the paper's
  validation rule), ``acil`` (random ReLU expansion + recursive least squares);
* gradient heads on the same features: ``exstream`` (ExStream's per-class clustered buffer),
  ``er`` (replay into a class-balanced buffer, an MLP head) and ``offline`` (the same head trained
  on everything seen so far: the reference for Ω).

REMIND and SIESTA learn the top of the network from PQ-compressed mid-network maps, a different
input (``layer="blocks.10"``): their arm is the ``maps`` variant below, on the same images and
stream, with its own offline reference on the same trainable top, at equal memory (the same
codebook and number of coded items) and equal rehearsal (SIESTA's sleep budget is the rows
REMIND replays: 21 per example).

Fashion-MNIST, all 60,000 training and 10,000 test images (extraction measured at about 320
images/s on 2 CPU cores: about 4 minutes, once). Class-incremental, 5 steps of 2 classes, or iid.

  python experiments/run.py --config=experiments/configs/frozen_features.py --workdir=W
  python experiments/run.py --config=experiments/configs/frozen_features.py:fashion_mnist,iid --workdir=W
  python experiments/run.py --config=experiments/configs/frozen_features.py:mnist5k --workdir=W
  python experiments/run.py --config=experiments/configs/frozen_features.py:fashion_mnist,maps --workdir=W

The argument is ``DATASET[,iid][,maps][,small]``: ``iid`` streams the classes mixed; ``maps`` runs
REMIND on blocks.10 maps; ``small`` uses a 2,000 / 1,000 stratified subset (smoke runs).

Sizes are those of the CPU runs in notes/frozen_features.md: RanPAC's projection M = 1,024 and
ACIL's expansion 1,024 instead of the papers' 10,000 and 8,192, KLDA's D = 1,024 (M x M float32
statistics: 3 x 400 MB and a 10,000^3 solve per λ at the papers' sizes). On a GPU, the papers'
sizes at the network's 224 px:

  python experiments/run.py --config=experiments/configs/frozen_features.py --workdir=W \
    --config.dataset_kwargs.resolution=224 --config.hparams.ranpac.projection_dim=10000 \
    --config.hparams.acil.expansion_dim=8192 --config.hparams.klda.embed_dim=25000
"""

from cljax.app.config_schema import base_config

SPLIT = "blocks.10"
PROJECTION = 1024  # RanPAC M, ACIL D, KLDA D on the CPU (papers: 10,000, 8,192, 5,000-25,000)
MEMORY_ITEMS = 1000  # every replay buffer, examples (pooled features: 5,120 B each; PQ codes: 112 B)
PASSES_PER_EXAMPLE = 0.75  # the gradient heads' budget (ER): 600 passes a step on mnist5k
REHEARSAL_ROWS_PER_EXAMPLE = 21  # REMIND's 1 new + r = 20 mixed replay rows per SGD step
STEP_EXAMPLES = {"mnist5k": 800, "mnist5k,small": 800, "fashion_mnist": 12000,
                 "fashion_mnist,small": 400}


def _dataset_kwargs(dataset: str, layer: str, small: bool) -> dict:
  if dataset not in ("fashion_mnist", "mnist5k"):
    raise ValueError(f"unknown data set {dataset!r}; valid: fashion_mnist, mnist5k")
  src = {}
  if dataset == "fashion_mnist":
    src = dict(max_train=2000, max_test=1000) if small else dict(max_train=0, max_test=0)
  return dict(source=dataset, source_kwargs=src, network="efficientnet_lite0", layer=layer,
              resolution=64, batch_size=128)


def get_config(arg: str = "fashion_mnist"):
  """arg: ``DATASET[,iid][,maps][,small]`` (module docstring)."""
  parts = [p for p in arg.split(",") if p]
  flags = set(parts[1:])
  bad = flags - {"iid", "maps", "small"}
  if bad:
    raise ValueError(f"unknown option(s) {sorted(bad)}; valid: iid, maps, small")
  maps = "maps" in flags
  c = base_config()
  c.dataset = "features"
  c.dataset_kwargs = _dataset_kwargs(parts[0] if parts else "fashion_mnist",
                                     SPLIT if maps else "pooled", "small" in flags)
  c.stream.ordering = "iid" if "iid" in flags else "class_incremental"
  c.stream.classes_per_step = 2
  c.stream.num_steps = 5
  c.stream.batch_size = 32
  c.budget.batch_size = 32
  sgd = dict(optimizer="sgd", lr=0.01, momentum=0.9, chunk=1)
  if maps:
    # REMIND as in remind_pretrained.py and SIESTA: F = blocks 11-15 + head, base-trained on
    # step 0 (the first 2 classes), inputs G's 4 x 4 x 112 maps.
    c.model = "efficientnet_lite0_head"
    c.model_kwargs = dict(split=SPLIT)
    c.base_init.classes = 2
    c.base_init.epochs = 4.0
    c.base_init.optimizer = "sgd"
    c.base_init.lr = 0.01
    c.base_init.momentum = 0.9
    c.base_init.weight_decay = 1e-4
    c.learners = "siesta,remind,offline"
    # Equal rehearsal: REMIND takes one SGD step of 1 + r = 21 rows per example; SIESTA sleeps
    # 21 * step_size / 32 passes of 32 rows (mnist5k: 800 examples a step -> 525 passes).
    c.budget.passes_per_step = REHEARSAL_ROWS_PER_EXAMPLE * STEP_EXAMPLES[c.dataset_kwargs[
        "source"] + (",small" if "small" in flags else "")] // 32
    # Equal memory: the same codebook (7 x 256 on the 112-d maps) and MEMORY_ITEMS items of
    # 4 x 4 x 7 code bytes; SIESTA also keeps its [K, 1280] class means (51 KB).
    c.hparams.siesta = dict(num_subvectors=7, num_centroids=256, pq_iters=25,
                            buffer_capacity=MEMORY_ITEMS, sleep_lr=0.05, prefill_buffer=False)
    c.hparams.remind = dict(split="none", num_subvectors=7, num_centroids=256, pq_iters=25,
                            buffer_capacity=MEMORY_ITEMS, replay_size=20, lr_step=30, lr0=0.01,
                            prefill_buffer=False)
    c.hparams.offline = dict(sgd, epochs_per_step=1.0)
    return c
  c.model = "mlp"  # the gradient learners' trainable head on the frozen features
  c.learners = "ncm,ncm_cos,slda,klda,ranpac,acil,exstream,er,offline"
  # ER's step budget: 0.75 passes of 32 rows per example of a step (mnist5k's 800: 600; its
  # online replay of 2 rows per example takes 2/32 of a pass each, the rest is step-end replay).
  step = STEP_EXAMPLES[c.dataset_kwargs["source"] + (",small" if "small" in flags else "")]
  c.budget.passes_per_step = int(PASSES_PER_EXAMPLE * step)
  c.hparams.ncm = dict(metric="euclidean")
  c.hparams.ncm_cos = dict(learner="ncm", metric="cosine")
  c.hparams.slda = dict(shrinkage=1e-4, covariance="plastic", update_rule="reference")
  c.hparams.klda = dict(learner="randumb", embedding="random_fourier", embed_dim=PROJECTION)
  c.hparams.ranpac = dict(projection_dim=PROJECTION, ridge="auto")
  c.hparams.acil = dict(expansion_dim=PROJECTION, ridge=0.1)
  c.hparams.exstream = dict(capacity=MEMORY_ITEMS // 10, replay="full_epoch", epoch_per="batch",
                            head="mlp")
  c.hparams.er = dict(lr=1e-3, memory_size=MEMORY_ITEMS, buffer="class_balanced")
  c.hparams.offline = dict(lr=1e-3, epochs_per_step=1.0)
  return c
