"""REMIND in its paper's setting: G a frozen ImageNet-pretrained network, F the rest, PQ replay.

G = EfficientNet-Lite0 (real ImageNet weights) up to block 10, the end of its 112-channel stage
(stride 16: 4x4x112 maps at 64 px, 14x14x112 at 224 px), frozen; its maps of every image are
extracted once (``cljax.data.features``, layer "blocks.10") and streamed. F =
``efficientnet_lite0_head``: blocks 11-15, the head convolution, pooling and a new fc, starting
from the pretrained weights and base-trained on the first 5 classes (step 0) of the G maps.
REMIND quantizes each 112-d vector with 7 sub-vectors x 256 centroids (7 bytes per position,
112 bytes per image), then one SGD step of F per incoming example with r replayed, mixed-up,
cropped maps. ER keeps raw 28x28 images in the same bytes (its G maps are recomputable from
them, so the stored item is the 784-byte image); finetune and offline train F.
Fashion-MNIST, a stratified 2,000 train / 1,000 test subset (CPU time), 5 base classes then one
class per step. Compare with ``remind.py`` (a narrow ResNet-18 base-trained on MNIST).

  python experiments/run.py --config=experiments/configs/remind_pretrained.py --workdir=W
  python experiments/run.py --config=experiments/configs/remind_pretrained.py:mnist5k --workdir=W2

Full size on a GPU (all of Fashion-MNIST at 224 px: 14x14 maps, the paper's r = 50):

  python experiments/run.py --config=experiments/configs/remind_pretrained.py --workdir=W \
    --config.dataset_kwargs.source_kwargs.max_train=0 \
    --config.dataset_kwargs.source_kwargs.max_test=0 --config.dataset_kwargs.resolution=224 \
    --config.hparams.remind.replay_size=50 --config.hparams.remind.lr_step=100
"""

from cljax.app.config_schema import base_config
from experiments.configs.slda_pretrained import pretrained_features

SPLIT = "blocks.10"
RAW_IMAGE_BYTES = 28 * 28
MEMORY_BYTES = 200 * RAW_IMAGE_BYTES  # 156,800 B for each replay method, as in remind.py
NUM_SUBVECTORS, NUM_CENTROIDS = 7, 256  # 16-dim sub-vectors of the 112-d maps


def get_config(dataset: str = "fashion_mnist"):
  """dataset: "fashion_mnist" or "mnist5k"."""
  c = base_config()
  c.dataset = "features"
  c.dataset_kwargs = pretrained_features(dataset, layer=SPLIT)
  if dataset == "fashion_mnist":
    c.dataset_kwargs.source_kwargs = dict(max_train=2000, max_test=1000)
  c.stream.ordering = "class_incremental"
  c.stream.classes_per_step = 1
  c.stream.batch_size = 32
  c.model = "efficientnet_lite0_head"
  c.model_kwargs = dict(split=SPLIT)
  c.base_init.classes = 5
  c.base_init.epochs = 4.0
  c.base_init.batch_size = 64
  c.base_init.optimizer = "sgd"
  c.base_init.lr = 0.01
  c.base_init.momentum = 0.9
  c.base_init.weight_decay = 1e-4
  c.learners = "remind,finetune,er,offline"
  c.budget.batch_size = 32
  c.budget.passes_per_step = 30
  # split="none": the base network is F itself and the stream's inputs are already G's maps.
  c.hparams.remind = dict(split="none", num_subvectors=NUM_SUBVECTORS,
                          num_centroids=NUM_CENTROIDS, pq_iters=25, buffer_bytes=MEMORY_BYTES,
                          replay_size=20, lr_step=30, lr0=0.01, prefill_buffer=False)
  sgd = dict(optimizer="sgd", lr=0.01, momentum=0.9, chunk=1)
  c.hparams.finetune = dict(sgd)
  c.hparams.er = dict(sgd, buffer="class_balanced", memory_size=MEMORY_BYTES // RAW_IMAGE_BYTES)
  c.hparams.offline = dict(sgd, epochs_per_step=1.0)
  return c
