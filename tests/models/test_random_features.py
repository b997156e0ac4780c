"""Random feature embeddings against scikit-learn's RBFSampler and a hand-written RanPAC map."""

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.kernel_approximation import RBFSampler

from cljax import data
from cljax.learners.randumb import scale_gamma
from cljax.models.pure import Net
from tests.helpers import arrays


def test_random_fourier_is_rbf_sampler_with_the_same_draws():
  x, _ = arrays(data.load("digits"))
  x = x[:64]
  net = Net.named("random_fourier", 3, dim=300)
  params = net.init(jax.random.key(0), x.shape[1:])
  params["gamma"] = jnp.float32(scale_gamma(x))
  ref = RBFSampler(gamma="scale", n_components=300).fit(x.reshape(64, -1))
  assert np.isclose(ref._gamma, float(params["gamma"]), rtol=1e-6)  # "scale" = 1 / (d Var X)
  # scikit-learn draws W = sqrt(2 gamma) N(0, 1) and b ~ U(0, 2 pi); give it ours.
  ref.random_weights_ = np.sqrt(2 * ref._gamma) * np.asarray(params["gaussian"], np.float64)
  ref.random_offset_ = np.asarray(params["offset"], np.float64)
  want = ref.transform(x.reshape(64, -1).astype(np.float64))
  got = np.asarray(net.features(params, jnp.asarray(x)))
  np.testing.assert_allclose(got, want, atol=2e-5)
  # The kernel it approximates: <phi(a), phi(b)> ~ exp(-gamma |a - b|^2) (Rahimi and Recht).
  big = Net.named("random_fourier", 3, dim=20000)
  p2 = {**big.init(jax.random.key(1), x.shape[1:]), "gamma": params["gamma"]}
  f = np.asarray(big.features(p2, jnp.asarray(x[:8])), np.float64)
  flat = x[:8].reshape(8, -1).astype(np.float64)
  k = np.exp(-float(params["gamma"]) * ((flat[:, None] - flat[None]) ** 2).sum(-1))
  assert np.abs(f @ f.T - k).max() < 0.05


def test_random_relu_is_ranpac_projection_and_frozen():
  x, y = arrays(data.load("digits"))
  net = Net.named("random_relu", 10, dim=128)
  params = net.init(jax.random.key(0), x.shape[1:])
  got = np.asarray(net.features(params, jnp.asarray(x[:16])))
  want = np.maximum(0.0, x[:16].reshape(16, -1) @ np.asarray(params["gaussian"]))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Only the head trains: the random matrix gets no gradient.
  grads = jax.grad(lambda p: jnp.sum(net.apply(p, jnp.asarray(x[:16])) ** 2))(params)
  assert float(jnp.abs(grads["gaussian"]).max()) == 0.0
  assert float(jnp.abs(grads["head"]["kernel"]).max()) > 0.0
