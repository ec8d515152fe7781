import pytest
import torch

from pyro_vae.networks import (MIN_SCALE, MLP, ConvDecoder, ConvEncoder, Decoder, Encoder, GaussianEncoder,
                               describe_network, make_decoder, make_encoder)


def test_mlp_layers_and_shapes():
    net = MLP(5, (7, 3), 2, activation="relu")
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 7), (7, 3), (3, 2)]
    assert net(torch.zeros(4, 6, 5)).shape == (4, 6, 2)
    assert len(MLP(5, (), 2)) == 1  # no hidden layer: a linear map


def test_encoder_returns_positive_scales_for_any_leading_shape():
    enc = Encoder(10, 3, (8,))
    loc, scale = enc(torch.randn(2, 5, 10) * 100)
    assert loc.shape == scale.shape == (2, 5, 3)
    assert (scale > 0).all()


def test_decoder_shape():
    assert Decoder(3, 20, (8,))(torch.zeros(4, 2, 3)).shape == (4, 2, 20)


def test_conv_networks_on_images():
    enc = ConvEncoder(784, 4, channels=4, hidden=16)
    loc, scale = enc(torch.rand(3, 784))
    assert loc.shape == (3, 4) and (scale > 0).all()
    dec = ConvDecoder(4, 784 * 2, outputs_per_feature=2, channels=4, hidden=16)
    assert dec(torch.zeros(5, 2, 4)).shape == (5, 2, 1568)
    with pytest.raises(ValueError, match="square"):
        ConvEncoder(30, 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        MLP(2, (3,), 1, activation="swishy")
    with pytest.raises(ValueError, match="positive"):
        MLP(2, (0,), 1)


@pytest.mark.parametrize("hidden", [(8,), (8, 5), ()])
def test_encoder_is_its_head_on_its_features(hidden):
    enc = Encoder(10, 3, hidden)
    x = torch.randn(2, 4, 10)
    h = enc.features(x)
    assert h.shape == (2, 4, enc.feature_dim)
    assert enc.feature_dim == (hidden[-1] if hidden else 10)
    loc, scale = enc(x)
    hl, hs = enc.head(h)
    assert torch.equal(loc, hl) and torch.equal(scale, hs)
    # the features are the activations of the last hidden layer (a naive pass through the layers)
    a = x
    for layer in list(enc.net)[:-1]:
        a = layer(a)
    assert torch.equal(h, a)


def test_an_encoder_of_the_users_gets_forward_and_head_from_its_two_halves():
    class Squares(GaussianEncoder):
        latent_dim, feature_dim = 2, 3

        def __init__(self):
            super().__init__()
            self.out = torch.nn.Linear(3, 4)

        def features(self, x):
            return x.square()

        @property
        def output_layer(self):
            return self.out

    enc = Squares()
    x = torch.randn(5, 3)
    raw = enc.out(x.square())
    loc, scale = enc(x)
    torch.testing.assert_close(loc, raw[:, :2])
    torch.testing.assert_close(scale, torch.nn.functional.softplus(raw[:, 2:]) + MIN_SCALE)
    torch.testing.assert_close(enc.head(enc.features(x)), (loc, scale))
    assert isinstance(Encoder(3, 2, (4,)), GaussianEncoder) and isinstance(ConvEncoder(16, 2), GaussianEncoder)


def test_conv_encoder_is_its_head_on_its_features():
    enc = ConvEncoder(784, 4, channels=3, hidden=(16, 6))
    x = torch.rand(2, 5, 784)
    h = enc.features(x)
    assert h.shape == (2, 5, 6) and enc.feature_dim == 6
    loc, scale = enc(x)
    torch.testing.assert_close(enc.head(h), (loc, scale))
    # one image at a time gives the same
    torch.testing.assert_close(enc(x[1, 2])[0], loc[1, 2])
    assert ConvDecoder(4, 784, channels=3, hidden=(6, 16))(torch.zeros(7, 4)).shape == (7, 784)


def test_networks_by_name():
    assert isinstance(make_encoder("mlp", 10, 3, (8,)), Encoder)
    assert isinstance(make_decoder("mlp", 3, 20, (8,)), Decoder)
    enc = make_encoder(("conv", {"channels": 2}), 784, 3, (8,), "relu")
    assert isinstance(enc, ConvEncoder) and enc.conv[0].out_channels == 2
    dec = make_decoder({"name": "conv", "channels": 2}, 3, 784 * 2, (8,), "relu", outputs_per_feature=2)
    assert isinstance(dec, ConvDecoder) and dec(torch.zeros(1, 3)).shape == (1, 1568)
    assert describe_network("conv") == {"name": "conv", "channels": 32}
    assert describe_network({"name": "mlp"}) == {"name": "mlp"}
    with pytest.raises(ValueError, match="unknown network 'resnet'"):
        make_encoder("resnet", 784, 3)
    with pytest.raises(ValueError, match="channels"):
        describe_network(("mlp", {"channels": 3}))
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        make_encoder(("conv", {"channels": 0}), 784, 3)
    with pytest.raises(TypeError, match="network must be"):
        describe_network(3)
