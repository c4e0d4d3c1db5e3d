import pytest
import torch

import datafree as df
from datafree.models import MODELS


@pytest.mark.parametrize("name", MODELS.names())
def test_zoo_forward_shapes(name):
    if name == "resnet110":
        pytest.skip("slow to build; same code as resnet20")
    m = df.create_model(name).eval()
    spec = m.input_spec
    with torch.no_grad():
        y = m(torch.zeros(2, *spec.shape))
    assert y.shape == (2, spec.num_classes)


@pytest.mark.parametrize("depth,params", [(20, 0.27), (56, 0.85)])
def test_cifar_resnet_param_counts(depth, params):
    n = sum(p.numel() for p in df.create_model(f"resnet{depth}").parameters()) / 1e6
    assert abs(n - params) < 0.01


def test_fingerprint_changes_with_weights():
    a, b = df.create_model("small_cnn"), df.create_model("small_cnn")
    b.load_state_dict(a.state_dict())
    assert df.fingerprint(a) == df.fingerprint(b)
    with torch.no_grad():
        b.fc.bias.add_(1)
    assert df.fingerprint(a) != df.fingerprint(b)
