import torch

from vae_pyro import Decoder, Encoder


def test_encoder_layers_and_shapes():
    enc = Encoder((1, 28, 28), z_dim=50, hidden_dim=400)
    assert (enc.fc1.in_features, enc.fc1.out_features) == (784, 400)
    assert (enc.fc21.in_features, enc.fc21.out_features) == (400, 50)
    assert (enc.fc22.in_features, enc.fc22.out_features) == (400, 50)
    loc, scale = enc(torch.rand(7, 1, 28, 28))
    assert loc.shape == scale.shape == (7, 50)
    assert (scale > 0).all()


def test_encoder_scale_is_exp_of_fc22():
    enc = Encoder((1, 28, 28), z_dim=3, hidden_dim=8)
    x = torch.rand(4, 1, 28, 28)
    _, scale = enc(x)
    hidden = torch.nn.functional.softplus(enc.fc1(x.flatten(1)))
    torch.testing.assert_close(scale, torch.exp(enc.fc22(hidden)))


def test_decoder_layers_shapes_and_range():
    dec = Decoder((1, 28, 28), z_dim=50, hidden_dim=400)
    assert (dec.fc1.in_features, dec.fc1.out_features) == (50, 400)
    assert (dec.fc21.in_features, dec.fc21.out_features) == (400, 784)
    probs = dec(torch.randn(5, 50) * 10)
    assert probs.shape == (5, 784)
    assert ((probs >= 0) & (probs <= 1)).all()


def test_input_size_follows_image_shape():
    enc = Encoder((3, 8, 6), z_dim=4, hidden_dim=16)
    dec = Decoder((3, 8, 6), z_dim=4, hidden_dim=16)
    assert enc.fc1.in_features == dec.fc21.out_features == 3 * 8 * 6
    loc, _ = enc(torch.rand(2, 3, 8, 6))
    assert dec(loc).shape == (2, 144)
