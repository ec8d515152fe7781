"""Encoder and decoder networks.

The encoder maps data ``x`` of shape ``(..., data_dim)`` to the location and scale of a
diagonal Gaussian q(z|x), each of shape ``(..., latent_dim)``. The decoder maps latents ``z``
of shape ``(..., latent_dim)`` to ``(..., out_dim)`` raw outputs that a likelihood turns into
p(x|z). Any leading batch dimensions are allowed, so particles can be vectorized.

The encoders come in two halves so that richer posterior families (:mod:`pyro_vae.guides`)
can read the same features: ``features(x)`` is everything up to the last hidden layer, of
size ``feature_dim``, and ``head(h)`` turns those features into ``(loc, scale)``;
``forward(x)`` is ``head(features(x))``.

:func:`make_encoder` and :func:`make_decoder` build them by name: ``"mlp"`` (fully connected)
or ``"conv"`` (convolutional, for square single-channel images).
"""

import math

from torch import nn
from torch.nn import functional as F

from pyro_vae.checks import parse_spec

__all__ = ["MLP", "GaussianEncoder", "Encoder", "Decoder", "ConvEncoder", "ConvDecoder", "ACTIVATIONS", "NETWORKS",
           "make_encoder", "make_decoder", "describe_network"]

ACTIVATIONS = {
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}

#: smallest posterior scale the encoder outputs; keeps log q(z|x) finite
MIN_SCALE = 1e-4


def _activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]()


def _check_hidden(hidden):
    if isinstance(hidden, int):
        hidden = (hidden,)
    try:
        hidden = tuple(int(h) for h in hidden)
    except (TypeError, ValueError):
        raise TypeError(f"hidden must be a sequence of layer sizes, got {hidden!r}") from None
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden layer sizes must be positive, got {hidden}")
    return hidden


class MLP(nn.Sequential):
    """A fully connected network ``in_dim -> hidden... -> out_dim``.

    :param int in_dim: input size.
    :param tuple hidden: hidden layer sizes (may be empty for a linear map).
    :param int out_dim: output size.
    :param str activation: name of the nonlinearity between layers.
    """

    def __init__(self, in_dim, hidden, out_dim, activation="softplus"):
        hidden = _check_hidden(hidden)
        layers = []
        sizes = (in_dim,) + hidden
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), _activation(activation)]
        layers.append(nn.Linear(sizes[-1], out_dim))
        super().__init__(*layers)


def _loc_scale(out, latent_dim):
    """``(loc, softplus(raw) + MIN_SCALE)`` from an encoder's output ``(loc, raw)``, shape
    ``(..., 2L)``."""
    loc, raw = out.split(latent_dim, dim=-1)
    return loc, F.softplus(raw) + MIN_SCALE


class GaussianEncoder(nn.Module):
    """Base of the encoders: a diagonal Gaussian q(z|x) read off the last hidden layer.

    ``forward(x)`` is ``head(features(x))``. A subclass sets ``latent_dim`` and ``feature_dim``,
    and implements :meth:`features` and :attr:`output_layer`.
    """

    def forward(self, x):
        """
        :param torch.Tensor x: data, shape ``(..., D)``.
        :returns: ``(loc, scale)``, each of shape ``(..., L)``.
        """
        return self.head(self.features(x))

    def features(self, x):
        """The last hidden layer.

        :param torch.Tensor x: data, shape ``(..., D)``.
        :returns: features, shape ``(..., feature_dim)``.
        """
        raise NotImplementedError

    @property
    def output_layer(self):
        """The layer from the features to the ``2 L`` outputs ``(loc, raw scale)``."""
        raise NotImplementedError

    def head(self, h):
        """``(loc, scale)`` from :meth:`features`: ``forward(x) == head(features(x))``.

        :param torch.Tensor h: features, shape ``(..., feature_dim)``.
        :returns: ``(loc, scale)``, each of shape ``(..., L)``; the scale is
            ``softplus(raw) + MIN_SCALE``.
        """
        return _loc_scale(self.output_layer(h), self.latent_dim)


class Encoder(GaussianEncoder):
    """MLP encoder for a diagonal Gaussian q(z|x).

    :param int data_dim: size D of a datapoint.
    :param int latent_dim: size L of the latent.
    :param tuple hidden: hidden layer sizes.
    :param str activation: nonlinearity.
    """

    def __init__(self, data_dim, latent_dim, hidden=(400,), activation="softplus"):
        super().__init__()
        self.data_dim = int(data_dim)
        self.latent_dim = int(latent_dim)
        self.net = MLP(data_dim, hidden, 2 * latent_dim, activation)
        hidden = _check_hidden(hidden)
        #: size of :meth:`features` (the last hidden layer; the data size without hidden layers)
        self.feature_dim = hidden[-1] if hidden else self.data_dim

    def features(self, x):
        for layer in list(self.net)[:-1]:
            x = layer(x)
        return x

    @property
    def output_layer(self):
        return self.net[-1]


class Decoder(nn.Module):
    """MLP decoder producing raw outputs for a likelihood.

    :param int latent_dim: size L of the latent.
    :param int out_dim: number of outputs (data_dim times the likelihood's outputs per feature).
    :param tuple hidden: hidden layer sizes.
    :param str activation: nonlinearity.
    """

    def __init__(self, latent_dim, out_dim, hidden=(400,), activation="softplus"):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.out_dim = int(out_dim)
        self.net = MLP(latent_dim, hidden, out_dim, activation)

    def forward(self, z):
        """
        :param torch.Tensor z: latents, shape ``(..., L)``.
        :returns: raw outputs, shape ``(..., out_dim)``.
        """
        return self.net(z)


def _image_side(data_dim):
    side = int(round(math.sqrt(data_dim)))
    if side * side != data_dim or side % 4 != 0:
        raise ValueError(
            f"convolutional networks need square images whose side is a multiple of 4 "
            f"(e.g. 28x28 = 784 features); got data_dim={data_dim}. Use the MLP networks."
        )
    return side


class ConvEncoder(GaussianEncoder):
    """Convolutional encoder for flattened square single-channel images.

    Two stride-2 convolutions (4x4 kernels) halve the side twice; fully connected layers of
    sizes ``hidden`` follow.

    :param int data_dim: ``side * side`` with ``side`` a multiple of 4 (e.g. 784).
    :param int latent_dim: size L of the latent.
    :param int channels: channels of the first convolution (the second has twice as many).
    :param hidden: size(s) of the fully connected layer(s): an int or a sequence of ints.
    :param str activation: nonlinearity.
    """

    def __init__(self, data_dim, latent_dim, channels=32, hidden=256, activation="relu"):
        super().__init__()
        self.side = _image_side(data_dim)
        self.data_dim = int(data_dim)
        self.latent_dim = int(latent_dim)
        c = _check_channels(channels)
        hidden = _check_hidden(hidden)
        self.conv = nn.Sequential(
            nn.Conv2d(1, c, 4, stride=2, padding=1), _activation(activation),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), _activation(activation),
        )
        conv_out = 2 * c * (self.side // 4) ** 2
        self.fc = MLP(conv_out, hidden, 2 * latent_dim, activation)
        #: size of :meth:`features`
        self.feature_dim = hidden[-1] if hidden else conv_out

    def features(self, x):
        """The last fully connected hidden layer.

        :param torch.Tensor x: flattened images, shape ``(..., side*side)``.
        :returns: features, shape ``(..., feature_dim)``.
        """
        batch = x.shape[:-1]
        h = self.conv(x.reshape(-1, 1, self.side, self.side)).flatten(1)
        for layer in list(self.fc)[:-1]:
            h = layer(h)
        return h.reshape(batch + (h.shape[-1],))

    @property
    def output_layer(self):
        return self.fc[-1]


class ConvDecoder(nn.Module):
    """Transposed-convolution decoder producing flattened square images.

    :param int latent_dim: size L of the latent.
    :param int out_dim: ``side * side * outputs_per_feature``.
    :param int outputs_per_feature: channels per pixel the likelihood needs.
    :param int channels: channels of the last transposed convolution's input (the first has
        twice as many).
    :param hidden: size(s) of the fully connected layer(s) before the transposed convolutions.
    :param str activation: nonlinearity.
    """

    def __init__(self, latent_dim, out_dim, outputs_per_feature=1, channels=32, hidden=256,
                 activation="relu"):
        super().__init__()
        k = int(outputs_per_feature)
        self.k = k
        if out_dim % k:
            raise ValueError(f"out_dim={out_dim} is not a multiple of outputs_per_feature={k}")
        self.side = _image_side(out_dim // k)
        self.out_dim = int(out_dim)
        c = _check_channels(channels)
        s4 = self.side // 4
        self.c = c
        self.fc = MLP(latent_dim, _check_hidden(hidden), 2 * c * s4 * s4, activation)
        self.deconv = nn.Sequential(
            _activation(activation),
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1), _activation(activation),
            nn.ConvTranspose2d(c, k, 4, stride=2, padding=1),
        )

    def forward(self, z):
        """
        :param torch.Tensor z: latents, shape ``(..., L)``.
        :returns: raw outputs, shape ``(..., out_dim)``, feature-major per output channel
            (all pixels of output 0, then all of output 1, ...).
        """
        batch = z.shape[:-1]
        s4 = self.side // 4
        h = self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, 2 * self.c, s4, s4)
        out = self.deconv(h)  # (B, k, side, side)
        return out.reshape(batch + (self.out_dim,))


def _check_channels(channels):
    if isinstance(channels, bool) or not isinstance(channels, int):
        raise TypeError(f"channels must be a positive integer, got {channels!r}")
    if channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels}")
    return channels


# --------------------------------------------------------------------------- by name
#: network kinds :func:`make_encoder` / :func:`make_decoder` build, with the options each takes
NETWORKS = {"mlp": (), "conv": ("channels",)}


def _network_spec(spec):
    name, kwargs = parse_spec(spec, "network")
    if name is None:
        raise TypeError(f"network must be 'mlp', 'conv' or a (name, kwargs) pair, got {type(spec).__name__}")
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(NETWORKS)}")
    unknown = sorted(set(kwargs) - set(NETWORKS[name]))
    if unknown:
        allowed = ", ".join(NETWORKS[name]) or "none"
        raise ValueError(f"the {name!r} network takes no argument(s) {unknown} (allowed: {allowed})")
    if name == "conv":
        kwargs = {"channels": 32, **kwargs}
    return name, kwargs


def make_encoder(spec, data_dim, latent_dim, hidden=(400,), activation="softplus"):
    """An encoder by name.

    :param spec: ``"mlp"``, ``"conv"``, or ``("conv", {"channels": c})`` /
        ``{"name": "conv", "channels": c}``. The convolutional networks need square images
        whose side is a multiple of 4 (flattened, e.g. 784 = 28x28).
    :param int data_dim: size D of a datapoint.
    :param int latent_dim: size L of the latent.
    :param tuple hidden: hidden layer sizes (for ``"conv"``: the fully connected layers
        after the convolutions).
    :param str activation: nonlinearity.
    :returns: :class:`Encoder` or :class:`ConvEncoder`.
    """
    name, kwargs = _network_spec(spec)
    if name == "mlp":
        return Encoder(data_dim, latent_dim, hidden, activation)
    return ConvEncoder(data_dim, latent_dim, hidden=hidden, activation=activation, **kwargs)


def make_decoder(spec, latent_dim, out_dim, hidden=(400,), activation="softplus", outputs_per_feature=1):
    """A decoder by name (see :func:`make_encoder`).

    :param int latent_dim: size L of the latent.
    :param int out_dim: outputs, ``D * outputs_per_feature``.
    :param tuple hidden: hidden layer sizes (for ``"conv"``: the fully connected layers
        before the transposed convolutions).
    :param str activation: nonlinearity.
    :param int outputs_per_feature: outputs per feature the likelihood needs.
    :returns: :class:`Decoder` or :class:`ConvDecoder`.
    """
    name, kwargs = _network_spec(spec)
    if name == "mlp":
        return Decoder(latent_dim, out_dim, hidden, activation)
    return ConvDecoder(latent_dim, out_dim, outputs_per_feature=outputs_per_feature, hidden=hidden,
                       activation=activation, **kwargs)


def describe_network(spec):
    """The JSON-able form of a network spec, ``{"name": ..., **kwargs}`` with defaults filled in.

    :raises ValueError: an unknown network or option.
    """
    name, kwargs = _network_spec(spec)
    return {"name": name, **kwargs}
