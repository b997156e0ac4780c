"""ExStream vs reservoir and queue buffers of equal memory, finetune and offline, on real MNIST.

A small CNN is base-initialised on the first 4 classes (step 0); the replay learners train an
MLP head (the reference's Linear-BN-ELU-Dropout MLP, Adam 2e-3) on its frozen 128-d features,
with a buffer of `capacity` items per class; finetune and offline train the whole CNN from the
same base network. Streamed 16 examples at a time, one epoch over the buffer after every update
(`epoch_per="batch"`; `epoch_per="example"` with --config.stream.batch_size=1 is the reference's
epoch after every example, slower). Other settings of the paper's study:
  --config.stream.ordering=iid --config.stream.num_steps=5
  --config.hparams.exstream.capacity=2   (and 4, 8, 16; set reservoir/queue to the same)
"""

from cljax.app.config_schema import base_config

CAPACITY = 8


def get_config():
  c = base_config()
  c.dataset = "mnist5k"
  c.stream.ordering = "class_iid"
  c.stream.classes_per_step = 2
  c.stream.batch_size = 16
  c.base_init.classes = 4
  c.base_init.epochs = 8.0
  c.model = "cnn"
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
