"""pyro-vae: latent-variable models in Pyro.

* :class:`VAE` -- a variational autoencoder as a Pyro model/guide pair with declarable priors,
  likelihoods and posterior families (:mod:`pyro_vae.guides`), trained by :func:`fit` (which
  trains any Pyro model/guide pair too);
* :class:`MixtureVAE` -- a VAE with an explicit discrete component y, trainable by the
  score-function (``trace``, ``tracegraph`` with baselines) and exact-sum (``enum``) estimators,
  and :func:`gradient_variance`, the variance of each estimator's gradient per parameter group;
* :func:`log_likelihood` -- per-datapoint log p(x) by importance sampling for any model/guide;
* :func:`ais_log_likelihood` -- per-datapoint log p(x) by annealed importance sampling (HMC),
  and :func:`bdmc`, its lower and upper bounds on data simulated from the model;
* :func:`inference_gaps` -- approximation and amortization gaps, for any guide family;
* :class:`GaussianMixture` -- a Gaussian mixture fitted by exact EM, and
  :class:`GaussianMixtureSVI`, the same mixture fitted by SVI with an amortized q(c|x);
* :func:`compare_vae_em` -- VAEs against EM on Gaussian-mixture data.
"""

__version__ = "0.1.0"

from pyro_vae.vae import VAE  # noqa: E402
from pyro_vae.mixture_vae import MixtureVAE  # noqa: E402
from pyro_vae.training import DivergenceError, fit  # noqa: E402
from pyro_vae.gradients import gradient_variance  # noqa: E402
from pyro_vae.importance import log_likelihood  # noqa: E402
from pyro_vae.ais import ais_log_likelihood, bdmc  # noqa: E402
from pyro_vae.gaps import inference_gaps  # noqa: E402
from pyro_vae.mixture import GaussianMixture, GaussianMixtureSVI  # noqa: E402
from pyro_vae.compare import compare_vae_em  # noqa: E402

__all__ = ["VAE", "MixtureVAE", "fit", "gradient_variance", "DivergenceError", "log_likelihood", "ais_log_likelihood", "bdmc",
           "inference_gaps", "GaussianMixture", "GaussianMixtureSVI", "compare_vae_em", "__version__"]
