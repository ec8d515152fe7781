import pytest
import torch

from pyro_vae.networks import MLP, ConvDecoder, ConvEncoder, Decoder, Encoder


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
