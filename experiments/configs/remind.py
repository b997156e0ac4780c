"""REMIND vs finetune / ER (same memory in bytes) / offline on real MNIST digits (mnist5k).

A narrow ResNet-18 (width 1/8, small-image stem: 28 px -> 4x4x64 after layer4.0) is trained on
the first 5 classes (step 0, the base set: 2,000 images; SGD with momentum, step lr schedule,
random-crop augmentation), then the 5 other classes arrive one per step (400 images each).

* remind: G = stem..layer4.0 frozen, F = layer4.1 + pool + fc; PQ with 4 sub-vectors x 256
  centroids trained on G's base features (64 bytes of codes per image); one SGD step per
  incoming example with r replayed, mixed-up, cropped feature maps. The buffer is sized by
  bytes: MEMORY_BYTES minus the codebook.
* er: a class-balanced buffer of MEMORY_BYTES / 784 raw 28x28 uint8 images (the same bytes).
* finetune, offline: the whole network, warm-started from the base network.

All learners also stream step 0 (the base set): REMIND's buffer receives the base set there
(``prefill_buffer=False``, so it is not stored twice), ER's memory too.

  python experiments/pretrain.py --config=experiments/configs/remind.py --workdir=W   # optional
  python experiments/run.py --config=experiments/configs/remind.py --workdir=W
  # Fashion-MNIST (Debian's dataset-fashion-mnist), a stratified 4,000 train / 1,000 test subset
  # so that the stream has mnist5k's size:
  python experiments/run.py --config=experiments/configs/remind.py:fashion_mnist --workdir=W2
"""

from cljax.app.config_schema import base_config

RAW_IMAGE_BYTES = 28 * 28  # one uint8 MNIST image
MEMORY_BYTES = 200 * RAW_IMAGE_BYTES  # 156,800 B for each replay method
WIDTH = 1 / 8
FEATURE_DIM = int(512 * WIDTH)  # G's output channels (layer4)
FEATURE_MAP = 4 * 4  # positions of G's output at 28 px with the small stem
NUM_SUBVECTORS, NUM_CENTROIDS = 4, 256


def remind_capacity() -> int:
  """Items REMIND's buffer holds in MEMORY_BYTES (what the learner computes from buffer_bytes,
  ``cljax.ops.pq.capacity_for_bytes``: the codebook's float32 centroids paid for first, then
  one uint8 code per sub-vector of each of an item's FEATURE_MAP vectors). Plain arithmetic:
  a config imports no jax."""
  codebook = NUM_SUBVECTORS * NUM_CENTROIDS * (FEATURE_DIM // NUM_SUBVECTORS) * 4
  return max(0, (MEMORY_BYTES - codebook) // (FEATURE_MAP * NUM_SUBVECTORS))


def get_config(dataset: str = "mnist5k"):
  """dataset: "mnist5k" or "fashion_mnist" (the text after ':' in --config=...remind.py:NAME)."""
  c = base_config()
  if dataset == "mnist5k":
    c.dataset = "mnist5k"
  elif dataset == "fashion_mnist":
    c.dataset = "fashion_mnist"
    c.dataset_kwargs = dict(max_train=4000, max_test=1000)
  else:
    raise ValueError(f"remind config: unknown data set {dataset!r}; valid: mnist5k, fashion_mnist")
  c.stream.ordering = "class_incremental"
  c.stream.classes_per_step = 1
  c.stream.batch_size = 32
  c.model = "resnet18"
  c.model_kwargs = dict(width=WIDTH, stem="small")
  c.base_init.classes = 5
  c.base_init.epochs = 8.0
  c.base_init.batch_size = 64
  c.base_init.optimizer = "sgd"
  c.base_init.lr = 0.05
  c.base_init.momentum = 0.9
  c.base_init.weight_decay = 5e-4
  c.base_init.lr_milestones = (0.5, 0.75)
  c.base_init.lr_factor = 0.1
  c.base_init.augment = "crop"  # no flips: mirrored digits are other shapes
  c.base_init.crop_padding = 2
  c.learners = "remind,finetune,er,offline"
  c.budget.batch_size = 32
  c.budget.passes_per_step = 60
  # REMIND: lr 0.1 -> 0.001 over ~400 examples of a class (the paper: over 1,300), r = 20.
  c.hparams.remind = dict(split="layer4.0", num_subvectors=NUM_SUBVECTORS,
                          num_centroids=NUM_CENTROIDS, pq_iters=25, buffer_bytes=MEMORY_BYTES,
                          replay_size=20, lr_step=30, prefill_buffer=False)
  # SGD with momentum, like REMIND's F; batch norm in training mode while training, running
  # statistics for prediction (cljax.train.loop.classifier_step). chunk=1: one SGD step per jitted
  # call; XLA:CPU compiled the default 8 unrolled ResNet steps in 2m12s (load ~5).
  sgd = dict(optimizer="sgd", lr=0.01, momentum=0.9, chunk=1)
  c.hparams.finetune = dict(sgd)
  c.hparams.er = dict(sgd, buffer="class_balanced", memory_size=MEMORY_BYTES // RAW_IMAGE_BYTES)
  c.hparams.offline = dict(sgd, epochs_per_step=1.0)
  c.eval.every_examples = 0
  return c
