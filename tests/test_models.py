import pytest
import torch

import datafree as df
from datafree.models import MODELS
from datafree.models.record import record_of


@pytest.mark.parametrize("name", MODELS.names())
def test_zoo_forward_shapes(name):
    if name == "resnet110":
        pytest.skip("slow to build; same code as resnet20")
    m = df.create_model(name).eval()
    spec = record_of(m).input_spec
    with torch.no_grad():
        y = m(torch.zeros(2, *spec.shape))
    assert y.shape == (2, spec.num_classes)


@pytest.mark.parametrize("depth,params", [(20, 0.27), (56, 0.85)])
def test_cifar_resnet_param_counts(depth, params):
    n = sum(p.numel() for p in df.create_model(f"resnet{depth}").parameters()) / 1e6
    assert abs(n - params) < 0.01


def test_option_a_shortcut_pads_new_channels_around_the_old_ones():
    import torch.nn.functional as F

    from datafree.models.zoo import CifarResNet

    x = torch.randn(2, 6, 8, 8)
    sc = CifarResNet(8, base_width=6).layer2[0].shortcut  # 6 -> 12 channels: 3 zero channels before, 3 after
    y = sc(x)
    assert y.shape == (2, 12, 4, 4)
    assert torch.equal(y, F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 3, 3)))  # the even-width layout the checkpoints use
    odd = CifarResNet(8, base_width=5)  # 5 -> 10: 2 before, 3 after
    y = odd.layer2[0].shortcut(x[:, :5])
    assert torch.equal(y[:, 2:7], x[:, :5, ::2, ::2]) and y[:, :2].abs().sum() == 0 and y[:, 7:].abs().sum() == 0
    assert odd(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_fingerprint_changes_with_weights():
    a, b = df.create_model("small_cnn"), df.create_model("small_cnn")
    b.load_state_dict(a.state_dict())
    assert df.fingerprint(a) == df.fingerprint(b)
    with torch.no_grad():
        b.fc.bias.add_(1)
    assert df.fingerprint(a) != df.fingerprint(b)
