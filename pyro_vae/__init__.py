"""pyro-vae: latent-variable models in Pyro.

* :class:`VAE` -- a variational autoencoder as a Pyro model/guide pair with declarable priors
  and likelihoods, trained by :func:`fit`;
* :func:`log_likelihood` -- per-datapoint log p(x) by importance sampling for any model/guide;
* :func:`inference_gaps` -- approximation and amortization gaps;
* :class:`GaussianMixture` -- a Gaussian mixture fitted by exact EM;
* :func:`compare_vae_em` -- VAEs against EM on Gaussian-mixture data.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
