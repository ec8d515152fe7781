"""pyro-vae: latent-variable models in Pyro.

* :class:`VAE` -- a variational autoencoder as a Pyro model/guide pair with declarable priors
  and likelihoods, trained by :func:`fit`;
* :func:`log_likelihood` -- per-datapoint log p(x) by importance sampling for any model/guide;
* :func:`inference_gaps` -- approximation and amortization gaps;
* :class:`GaussianMixture` -- a Gaussian mixture fitted by exact EM;
* :func:`compare_vae_em` -- VAEs against EM on Gaussian-mixture data.
"""

__version__ = "0.1.0"

from pyro_vae.vae import VAE  # noqa: E402
from pyro_vae.training import fit  # noqa: E402
from pyro_vae.importance import log_likelihood  # noqa: E402
from pyro_vae.gaps import inference_gaps  # noqa: E402
from pyro_vae.mixture import GaussianMixture  # noqa: E402
from pyro_vae.compare import compare_vae_em  # noqa: E402

__all__ = ["VAE", "fit", "log_likelihood", "inference_gaps", "GaussianMixture", "compare_vae_em",
           "__version__"]
