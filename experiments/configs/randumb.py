r"""RanDumb (Prabhu et al. 2024) truly online: random Fourier features of raw pixels and streaming
LDA with OAS shrinkage, one example per update, on real digits or Fashion-MNIST.

  python experiments/run.py --workdir=/tmp/randumb --config=experiments/configs/randumb.py
  python experiments/run.py --workdir=DIR --config=experiments/configs/randumb.py:fashion_mnist
  python experiments/studies/randumb.py --workdir=DIR   # 3 seeds x both data sets + offline LDA

Stream: class-incremental, 5 steps of 2 classes, ``stream.batch_size = 1`` (each example is one
``update``: the setting the RanDumb authors ran offline because their per-example update was too
slow). ``randumb`` is RanDumb (``embed_dim`` D random Fourier features, γ = "scale" from the
stream's first 256 examples, per-class OAS covariances averaged by the priors: scikit-learn's
``LinearDiscriminantAnalysis(solver="lsqr", covariance_estimator=OAS())``, the reference's head;
K·D² floats of state, 168 MB here); ``randumb_pooled`` the same embedding with one OAS of the
pooled covariance (D² floats, the form for large D); ``randumb_relu`` is RanPAC's random ReLU
projection with the per-class head; ``slda`` is Deep
SLDA's streaming LDA on the raw pixels (ε = 1e-4, no embedding) for reference. The paper's D is up
to 25,000 (a 2.5 GB covariance); D = 2,048 keeps a run to seconds on 2 CPU cores. No gradient
step anywhere: every learner spends 0 passes. Fashion-MNIST: a stratified 10,000 / 2,000 subset.
"""

from cljax.app.config_schema import base_config

EMBED_DIM = 2048


def get_config(dataset: str = "mnist5k"):
  """``dataset``: ``mnist5k`` (default) or ``fashion_mnist`` (text after ':' in --config=)."""
  c = base_config()
  if dataset == "mnist5k":
    c.dataset = "mnist5k"
  elif dataset == "fashion_mnist":
    c.dataset = "fashion_mnist"
    c.dataset_kwargs = dict(max_train=10000, max_test=2000)
  else:
    raise ValueError(f"randumb config: unknown data set {dataset!r}; valid: mnist5k, "
                     "fashion_mnist")
  c.stream.ordering = "class_incremental"
  c.stream.classes_per_step = 2
  c.stream.batch_size = 1  # one example per update
  c.learners = "randumb,randumb_pooled,randumb_relu,slda"
  c.hparams.randumb = dict(embed_dim=EMBED_DIM, gamma="scale", donate=True)
  c.hparams.randumb_pooled = dict(learner="randumb", embed_dim=EMBED_DIM, gamma="scale",
                                  covariance="pooled", donate=True)
  c.hparams.randumb_relu = dict(learner="randumb", embedding="random_relu", embed_dim=EMBED_DIM,
                                donate=True)
  c.hparams.slda = dict(shrinkage=1e-4, update_rule="pooled", donate=True)
  c.budget.passes_per_step = None  # nothing here takes a gradient step: each learner's default
  c.eval.every_examples = 0
  c.eval.batch_size = 500
  return c
