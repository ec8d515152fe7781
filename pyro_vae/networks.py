"""Encoder and decoder networks.

The encoder maps data ``x`` of shape ``(..., data_dim)`` to the location and scale of a
diagonal Gaussian q(z|x), each of shape ``(..., latent_dim)``. The decoder maps latents ``z``
of shape ``(..., latent_dim)`` to ``(..., out_dim)`` raw outputs that a likelihood turns into
p(x|z). Any leading batch dimensions are allowed, so particles can be vectorized.
"""

import math

from torch import nn
from torch.nn import functional as F

__all__ = ["MLP", "Encoder", "Decoder", "ConvEncoder", "ConvDecoder", "ACTIVATIONS"]

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


class Encoder(nn.Module):
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

    def forward(self, x):
        """
        :param torch.Tensor x: data, shape ``(..., D)``.
        :returns: ``(loc, scale)``, each of shape ``(..., L)``.
        """
        h = self.net(x)
        loc, raw = h.split(self.latent_dim, dim=-1)
        return loc, F.softplus(raw) + MIN_SCALE


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


class ConvEncoder(nn.Module):
    """Convolutional encoder for flattened square single-channel images.

    :param int data_dim: ``side * side`` with ``side`` a multiple of 4 (e.g. 784).
    :param int latent_dim: size L of the latent.
    :param int channels: channels of the first convolution (the second has twice as many).
    :param int hidden: size of the fully connected layer.
    """

    def __init__(self, data_dim, latent_dim, channels=32, hidden=256, activation="relu"):
        super().__init__()
        self.side = _image_side(data_dim)
        self.latent_dim = int(latent_dim)
        c = channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, c, 4, stride=2, padding=1), _activation(activation),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), _activation(activation),
        )
        self.fc = MLP(2 * c * (self.side // 4) ** 2, (hidden,), 2 * latent_dim, activation)

    def forward(self, x):
        """
        :param torch.Tensor x: flattened images, shape ``(..., side*side)``.
        :returns: ``(loc, scale)``, each of shape ``(..., L)``.
        """
        batch = x.shape[:-1]
        h = self.conv(x.reshape(-1, 1, self.side, self.side))
        h = self.fc(h.flatten(1)).reshape(batch + (2 * self.latent_dim,))
        loc, raw = h.split(self.latent_dim, dim=-1)
        return loc, F.softplus(raw) + MIN_SCALE


class ConvDecoder(nn.Module):
    """Transposed-convolution decoder producing flattened square images.

    :param int latent_dim: size L of the latent.
    :param int out_dim: ``side * side * outputs_per_feature``.
    :param int outputs_per_feature: channels per pixel the likelihood needs.
    """

    def __init__(self, latent_dim, out_dim, outputs_per_feature=1, channels=32, hidden=256,
                 activation="relu"):
        super().__init__()
        k = int(outputs_per_feature)
        self.k = k
        self.side = _image_side(out_dim // k)
        self.out_dim = int(out_dim)
        c = channels
        s4 = self.side // 4
        self.c = c
        self.fc = MLP(latent_dim, (hidden,), 2 * c * s4 * s4, activation)
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
