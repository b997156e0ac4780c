"""ExStream in its paper's setting: heads on frozen ImageNet-pretrained features.

Fashion-MNIST (a stratified 4,000 / 1,000 subset) through EfficientNet-Lite0 (real ImageNet
weights, 64 px, pooled 1,280-d features, cached by ``cljax.data.features``). ExStream, reservoir
and per-class queue buffers of equal memory (``capacity`` items per class) train the reference's
MLP head on the features, streamed 16 at a time with one epoch over the buffer after every update
(``epoch_per="batch"``); finetune and offline train the same head. class_iid, 5 steps of 2
classes. Compare with ``exstream.py`` (a small CNN base-trained on 4 MNIST classes).

  python experiments/run.py --config=experiments/configs/exstream_pretrained.py --workdir=W
  python experiments/run.py --config=experiments/configs/exstream_pretrained.py:mnist5k --workdir=W2

Full size on a GPU (all 70,000 images at 224 px; the reference protocol, an epoch after every
example: add --config.stream.batch_size=1 --config.hparams.exstream.epoch_per=example and the
same for reservoir and queue):

  python experiments/run.py --config=experiments/configs/exstream_pretrained.py --workdir=W \
    --config.dataset_kwargs.source_kwargs.max_train=0 \
    --config.dataset_kwargs.source_kwargs.max_test=0 --config.dataset_kwargs.resolution=224
"""

from cljax.app.config_schema import base_config
from experiments.configs.slda_pretrained import pretrained_features

CAPACITY = 8


def get_config(dataset: str = "fashion_mnist"):
  """dataset: "fashion_mnist" or "mnist5k"."""
  c = base_config()
  c.dataset = "features"
  c.dataset_kwargs = pretrained_features(dataset)
  c.stream.ordering = "class_iid"
  c.stream.classes_per_step = 2
  c.stream.num_steps = 5
  c.stream.batch_size = 16
  c.model = "mlp"
  c.learners = "exstream,reservoir,queue,finetune,offline"
  c.budget.batch_size = 32
  c.budget.passes_per_step = 100
  replay = dict(learner="exstream", capacity=CAPACITY, replay="full_epoch", epoch_per="batch",
                head="mlp")
  c.hparams.exstream = dict(replay, buffer="exstream")
  c.hparams.reservoir = dict(replay, buffer="reservoir")
  c.hparams.queue = dict(replay, buffer="queue")
  c.hparams.finetune = dict(lr=1e-3)
  c.hparams.offline = dict(lr=1e-3, epochs_per_step=5.0)
  return c
