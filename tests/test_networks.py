import torch

from vae_pyro import Decoder, Encoder, model, networks


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


# --- Tomczak & Welling's parts: gated layers, He initialisation, bounded scales ----------------


def test_gated_layers_keep_the_names_and_gate_half_of_each_linear():
    """A gated layer is one Linear of twice the width, split (W1 x + b1) * sigmoid(W2 x + b2):
    the same parameter names as softplus layers, so checkpoints read alike."""
    plain = Encoder((1, 28, 28), z_dim=3, hidden_dim=8, hidden_layers=2)
    enc = Encoder((1, 28, 28), z_dim=3, hidden_dim=8, hidden_layers=2, activation="gated")
    assert list(enc.state_dict()) == list(plain.state_dict())
    assert enc.fc1.weight.shape == (16, 784) and enc.deeper[0].weight.shape == (16, 8)
    x = torch.rand(4, 1, 28, 28)
    a, b = enc.fc1(x.flatten(1)).chunk(2, -1)
    first = a * torch.sigmoid(b)
    a, b = enc.deeper[0](first).chunk(2, -1)
    torch.testing.assert_close(enc.features(x), a * torch.sigmoid(b))
    dec = Decoder((1, 28, 28), z_dim=3, hidden_dim=8, activation="gated")
    z = torch.randn(2, 4, 3)  # particles x batch
    a, b = dec.fc1(z).chunk(2, -1)
    torch.testing.assert_close(dec.logits(z), dec.fc21(a * torch.sigmoid(b)))


def test_he_init_draws_every_linear_weight_from_n_0_2_over_fan_in():
    enc = Encoder((1, 28, 28), z_dim=40, hidden_dim=300, hidden_layers=2, activation="gated")
    biases = [m.bias.clone() for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    networks.INITS["he"](enc)
    linears = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4  # fc1, deeper.0, fc21, fc22
    for m, bias in zip(linears, biases, strict=True):
        std = (2 / m.in_features) ** 0.5
        assert abs(m.weight.std().item() / std - 1) < 0.05 and abs(m.weight.mean()) < 0.1 * std
        assert torch.equal(m.bias, bias)  # biases keep PyTorch's


def test_scale_bounds_clip_fc22_before_the_transform():
    """scale_param=logvar with bounds [-6, 2]: scale = exp(hardtanh(fc22, -6, 2) / 2), no gradient
    where fc22 is outside (the authors' bounded log-variance)."""
    enc = Encoder((1, 28, 28), 5, 8, scale_param="logvar", scale_bounds=[-6.0, 2.0])
    h = torch.tensor([-9.0, -5.0, 0.0, 1.5, 5.0])
    with torch.no_grad():
        enc.fc22.weight.zero_()
        enc.fc22.bias.copy_(h)
    _, scale = enc(torch.rand(2, 1, 28, 28))
    torch.testing.assert_close(scale, (0.5 * h.clamp(-6, 2)).exp().expand(2, 5))
    scale.sum().backward()
    assert enc.fc22.bias.grad[0] == 0 and enc.fc22.bias.grad[-1] == 0
    assert (enc.fc22.bias.grad[1:4] > 0).all()


def test_the_config_choices_are_the_registries():
    """model.activation, model.init and model.decoder_reads are choices made from the
    registries beside their implementations: OmegaConf refuses any other name."""
    tables = {
        model.Activation: networks.ACTIVATIONS,
        model.Init: networks.INITS,
        model.DecoderReads: model.DECODER_READS,
    }
    for choice, table in tables.items():
        assert [member.name for member in choice] == list(table)
