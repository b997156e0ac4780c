"""experiments/studies/backbones.py: its configs are valid and its linear probe is sound."""

import numpy as np
import pytest

from cljax import data
from cljax.app import experiment
from experiments.studies import backbones
from tests.helpers import arrays


def test_backbone_configs_are_valid_and_named():
  for bk in backbones.BACKBONES:
    c = backbones.config_for(bk)
    experiment.validate_config(c)
    assert c.model == "vit_micro" and c.hparams.ccic.lr == 1e-4
  assert backbones.config_for("sup2").base_init.kind == "supervised"
  assert backbones.config_for("mae4").base_init.dataset == "fashion_mnist"  # no fallback
  assert not backbones.config_for("random").base_init.dataset
  with pytest.raises(ValueError, match="unknown backbone"):
    backbones.config_for("imagenet")


def test_linear_probe_of_raw_pixels_and_of_noise():
  (x, y), (xt, yt) = arrays(data.load("digits")), arrays(data.load("digits"), "test")
  flat = lambda a: np.asarray(a).reshape(len(a), -1)  # noqa: E731
  assert backbones.linear_probe(flat, x, y, xt, yt) > 0.9  # digits' pixels are linearly separable
  rng = np.random.default_rng(0)
  noise = lambda a: rng.normal(size=(len(a), 8))  # noqa: E731
  assert backbones.linear_probe(noise, x, y, xt, yt) < 0.3  # features unrelated to the labels
