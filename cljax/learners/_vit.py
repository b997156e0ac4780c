"""The ViT (+ MAE decoder) the DietCL family of learners trains (DietCL, the joint bound, CaSSLe,
CCIC, DualNet, L2P) and its layer-wise lr factors. Private to cljax/learners."""

from __future__ import annotations

from typing import Optional

from cljax import optim
from cljax.models import vit as vit_lib
from cljax.models.pure import Net

VIT_MODELS = tuple(f"vit_{c}" for c in vit_lib.CONFIGS)


def vit_net(learner: str, model: str, num_classes: int, model_kwargs: Optional[dict]) -> Net:
  """The learner's ViT (+ MAE decoder): ``Net.named(model, ...)``, so params from
  ``Net.named(model, ...)`` elsewhere (e.g. ``cljax.train.pretrain.train_mae``) fit as
  ``init_params``. A model that is not a ViT raises ValueError naming ``learner``."""
  if model not in VIT_MODELS:
    raise ValueError(f"learner {learner!r} needs a ViT with an MAE decoder; model {model!r} is "
                     f"not one (valid: {list(VIT_MODELS)})")
  return Net.named(model, num_classes, **(model_kwargs or {}))


def vit_layer_scales(params: dict, decay: float) -> dict:
  """Layer-wise lr factors decay^(depth + 1 - layer) of a ViT's params (``vit.layer_id``), a
  params-shaped tree of [] float32."""
  depth = len(params["blocks"])
  return optim.layer_scales(params, lambda names: vit_lib.layer_id(names, depth), depth, decay)
