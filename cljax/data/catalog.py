"""The data sets by name: ``load(name, **kwargs)`` and ``names()``.

The one table of loaders. Each real data set's loader lives in ``sources.py``; ``features`` is
built here from a source loaded through this table and a frozen pretrained backbone
(``features.py``), so that neither of those modules needs the other's table.

    ds = cljax.data.load("digits")
    ds = cljax.data.load("features", source="fashion_mnist", layer="pooled", resolution=64)
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

from cljax.data import sources
from cljax.data.sources import DataError, Dataset


def features(source: str = "fashion_mnist", source_kwargs: Optional[dict] = None,
             network: str = "efficientnet_lite0", layer: str = "pooled",
             resolution: int = 64, weights: Optional[str] = None,
             cache_dir: Optional[str] = None, batch_size: int = 128,
             log: Optional[Callable[[str], None]] = print) -> Dataset:
  """Data set ``source`` (a ``names()`` entry, loaded with ``source_kwargs``) with its inputs
  replaced by their features through pretrained ``network`` (``cljax.data.features.backbone``:
  ``layer``, ``resolution``, ``weights`` file for resnet18), extracted once and cached on disk;
  labels, class names and splits unchanged.

  In a config: ``dataset="features"`` with these keyword arguments in ``dataset_kwargs``.
  """
  # Imported here: the backbone imports jax and the models, which the other loaders never need.
  from cljax.data import features as features_lib  # pylint: disable=import-outside-toplevel
  ds = load(source, **dict(source_kwargs or {}))
  bb = features_lib.backbone(network, layer, resolution, weights)
  return features_lib.dataset(ds, bb, cache_dir=cache_dir, batch_size=batch_size, log=log)


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": sources.digits,
    "mnist5k": sources.mnist5k,
    "fashion_mnist": sources.fashion_mnist,
    # scikit-learn's tables of real measurements (features [d], z-scored): 3, 3 and 2 classes
    "iris": sources.iris,
    "wine": sources.wine,
    "breast_cancer": sources.breast_cancer,
    "npz": sources.npz,
    "image_folder": sources.image_folder,
    # another data set through a frozen pretrained backbone, cached (cljax.data.features)
    "features": features,
}


def names() -> list[str]:
  """Every data set name ``load`` accepts (``tfds:<name>`` stands for any TFDS data set)."""
  return sorted(_LOADERS) + ["tfds:<name>"]


def load(name: str, **kwargs) -> Dataset:
  """Loads data set ``name`` (see ``names()``); ``tfds:NAME`` loads NAME through TFDS.

  ``kwargs`` go to the loader (an experiment's ``dataset_kwargs``); unknown or missing ones
  raise DataError naming the valid ones.
  """
  if name.startswith("tfds:"):
    loader, kwargs = sources.tfds_source, {"name": name[len("tfds:"):], **kwargs}
  elif name in _LOADERS:
    loader = _LOADERS[name]
  else:
    raise DataError(f"unknown data set {name!r}; valid: {names()}")
  params = inspect.signature(loader).parameters
  unknown = sorted(set(kwargs) - set(params))
  if unknown:
    raise DataError(f"unknown argument(s) {unknown} of data set {name!r} (dataset_kwargs); valid: "
                    f"{sorted(k for k in params if k != 'name' or loader is not sources.tfds_source)}")
  missing = [k for k, v in params.items() if v.default is inspect.Parameter.empty
             and k not in kwargs]
  if missing:
    raise DataError(f"data set {name!r} needs {missing} (e.g. "
                    f"--config.dataset_kwargs.{missing[0]}=...)")
  return loader(**kwargs)
