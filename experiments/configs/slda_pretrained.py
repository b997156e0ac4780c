"""Deep SLDA in its paper's setting: a frozen ImageNet-pretrained backbone, here EfficientNet-Lite0.

Fashion-MNIST (Debian's dataset-fashion-mnist; a stratified 4,000 train / 1,000 test subset)
goes once through EfficientNet-Lite0 with its real ImageNet weights at 64 px (cached by
``cljax.data.features``: the first run extracts, ~20 s on 2 CPU cores; later runs read the
cache). Deep SLDA streams the pooled 1,280-d features, one pass, no backward pass; finetune,
ER and offline train an MLP on the same frozen features. Class-incremental, 5 steps of 2 classes.
Compare with ``slda.py`` (a small CNN base-trained on 4 MNIST classes).

  python experiments/run.py --config=experiments/configs/slda_pretrained.py --workdir=W
  python experiments/run.py --config=experiments/configs/slda_pretrained.py:mnist5k --workdir=W2

Full size on a GPU (all 60,000 + 10,000 images at the network's 224 px; on 2 CPU cores the
extraction alone runs at about 8 images/s, 2-3 hours, hence the GPU):

  python experiments/run.py --config=experiments/configs/slda_pretrained.py --workdir=W \
    --config.dataset_kwargs.source_kwargs.max_train=0 \
    --config.dataset_kwargs.source_kwargs.max_test=0 --config.dataset_kwargs.resolution=224
"""

from cljax.app.config_schema import base_config

SOURCES = {"fashion_mnist": dict(max_train=4000, max_test=1000), "mnist5k": {}}


def pretrained_features(dataset: str, layer: str = "pooled", resolution: int = 64) -> dict:
  """``dataset_kwargs`` of the ``features`` data set: ``dataset`` through EfficientNet-Lite0."""
  if dataset not in SOURCES:
    raise ValueError(f"unknown data set {dataset!r}; valid: {sorted(SOURCES)}")
  return dict(source=dataset, source_kwargs=dict(SOURCES[dataset]), network="efficientnet_lite0",
              layer=layer, resolution=resolution, batch_size=128)


def get_config(dataset: str = "fashion_mnist"):
  """dataset: "fashion_mnist" or "mnist5k" (the text after ':' in --config=...py:NAME)."""
  c = base_config()
  c.dataset = "features"
  c.dataset_kwargs = pretrained_features(dataset)
  c.stream.ordering = "class_incremental"
  c.stream.classes_per_step = 2
  c.stream.num_steps = 5
  c.stream.batch_size = 32
  c.model = "mlp"  # the SGD baselines' head on the frozen features
  c.learners = "slda,finetune,er,offline"
  c.budget.batch_size = 32
  c.budget.passes_per_step = 150
  c.hparams.slda = dict(shrinkage=1e-4, covariance="plastic", update_rule="reference")
  c.hparams.finetune = dict(lr=1e-3)
  c.hparams.er = dict(lr=1e-3, memory_size=300)
  c.hparams.offline = dict(lr=1e-3, epochs_per_step=5.0)
  return c
