"""Gaussian mixtures.

* :mod:`~pyro_vae.mixture.estimator` -- :class:`GaussianMixture`, fitted by exact EM, a drop-in
  scikit-learn estimator that is also a Pyro model/guide pair;
* :mod:`~pyro_vae.mixture.gaussian` -- the numerics of the components: parameter conversions,
  the centered and gram computations of the E and M steps, collapse detection;
* :mod:`~pyro_vae.mixture.sources` -- input conversion and the rows EM passes over, in memory or
  in chunks (and over processes);
* :mod:`~pyro_vae.mixture.parallel` -- the blocks of an EM pass side by side on CPU threads;
* :mod:`~pyro_vae.mixture.initialization` -- k-means++, Lloyd's k-means and random initializations;
* :mod:`~pyro_vae.mixture.svi` -- :class:`GaussianMixtureSVI`, the same mixture fitted by SVI
  with an amortized q(z|x) (exact sum over the component, or score function with a baseline).
"""

from pyro_vae.mixture.estimator import ALGORITHMS, ConvergenceWarning, GaussianMixture, NotFittedError
from pyro_vae.mixture.gaussian import COVARIANCE_TYPES
from pyro_vae.mixture.initialization import INIT_METHODS
from pyro_vae.mixture.svi import GaussianMixtureSVI

__all__ = ["GaussianMixture", "ConvergenceWarning", "NotFittedError", "COVARIANCE_TYPES",
           "INIT_METHODS", "ALGORITHMS", "GaussianMixtureSVI"]
